"""Drop cancelled timers from an event-loop worker's timer heap, so the heap stays small.

Every job a prefork worker hands to a pool process arms a time-limit timer in the worker's
main process (Celery's ``AsynPool``: the soft limit, ``TASKFLEET_SOFT_TIME_LIMIT``, 300 s by
default). When the job finishes, Celery cancels the timer, and kombu's timer only marks the
entry cancelled: it stays in the heap until its time comes, 300 s later. So the main process
holds one dead entry (about 500 bytes: the entry, its weak proxy, its arguments, the heap
tuple) per job of the last five minutes: 150,000 entries, ~70 MiB, at 500 jobs/s, which the
autoscaler's later forks inherit (celery/celery#1129, #5200). Stock Celery without time
limits arms no such timer.

:class:`PurgeCancelledTimers`, a worker bootstep, removes the cancelled entries every
``PURGE_INTERVAL_S``: one pass over the heap (about 1 ms for 10,000 entries here), so it holds
at most that interval's worth of them. ``taskfleet.workers.hooks.install_worker_hooks`` adds
the step to the worker's app.
"""

from __future__ import annotations

import heapq
import logging
from typing import Any

from celery import bootsteps

log = logging.getLogger(__name__)

#: How often cancelled entries are removed from the heap (seconds).
PURGE_INTERVAL_S = 10.0


def purge_cancelled(timer: Any) -> int:
    """Remove the cancelled entries of kombu ``timer``'s heap, in place.

    In place because the timer's running iterator holds the list itself.

    Returns:
        How many entries were removed.
    """
    queue: list[Any] = timer._queue
    kept = [item for item in queue if not item.entry.canceled]
    removed = len(queue) - len(kept)
    if removed:
        heapq.heapify(kept)
        queue[:] = kept
    return removed


class PurgeCancelledTimers(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker bootstep: purge the event loop's cancelled timers every ``PURGE_INTERVAL_S``."""

    requires = ("celery.worker.components:Hub",)

    def include_if(self, w: Any) -> bool:
        """Only a worker driven by an event loop (prefork, solo) has the kombu timer heap."""
        return bool(getattr(w, "use_eventloop", False))

    def start(self, w: Any) -> None:
        """Schedule the purge on the worker's hub (once: the hub lives as long as the worker)."""
        timer = w.hub.timer
        w.hub.call_repeatedly(PURGE_INTERVAL_S, _purge, timer)


def _purge(timer: Any) -> None:
    removed = purge_cancelled(timer)
    if removed:
        log.debug("removed %d cancelled timers", removed)
