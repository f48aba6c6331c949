"""Several jobs per fetch for a solo worker with a backlog of short jobs.

A solo worker runs each job inside the fetch's reply handler, then sends the next fetch and
waits for it: one Redis round trip per job, on which the worker does nothing else. When the
queue holds a backlog of jobs of kinds this worker knows to be short, the fetch script
(``taskfleet.routing.atomic_fetch``) takes up to :attr:`BatchSizer.limit` of them in that one
call, each recorded as unacked under the worker's owner id before it is popped, as a single
fetch's is, and the channel runs them one after the other (``taskfleet.routing.transport``).
Measured on one solo worker and 5,000 no-op jobs: about 2,600 jobs/s fetching one at a time,
about 3,850 fetching up to 8.

What keeps it safe, and fair:

* **Only solo workers.** Their delivery is the job's run, so nothing waits in the worker's
  memory. A prefork parent or a green worker would hold the extra jobs beyond its prefetch:
  :func:`configure` is called for solo workers alone
  (``taskfleet.workers.signals.batch_fetches_in_solo_worker``).
* **Only short kinds, so a long job never holds others.** The worker times each delivery
  (the job's run and its acknowledgement) and keeps an average per job kind. The script
  batches only messages whose kind averages at most :data:`SHORT_JOB_S` here, and stops
  before any other: a kind never run by this worker, or a long one, is fetched alone, as
  before.
* **A time budget while running.** A batch whose jobs take longer than their kinds promised
  stops once :data:`BATCH_BUDGET_S` is spent; the jobs it did not start go back to the head
  of their queue, in order, not marked ``redelivered`` (``BatchedQoS.return_undelivered``):
  a mark would make the next worker look each one's result up, in Postgres too, and count
  it towards the poison-pill limit.
* **Strict priority.** A batch comes from the most urgent non-empty sub-list only; a more
  urgent job pushed meanwhile waits at most the budget plus the job running.
* **Crash safety unchanged.** Every message of a batch is recorded under the owner before it
  leaves the queue: a worker killed mid-batch has all of them restored by the reclaim.

``TASKFLEET_FETCH_BATCH=1`` fetches one job at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from time import monotonic
from typing import Final

#: Wall time a batch's jobs together may take before the rest go back to the queue.
BATCH_BUDGET_S: Final[float] = 0.01
#: Longest average run of a job kind that a batch may hold.
SHORT_JOB_S: Final[float] = BATCH_BUDGET_S / 4
#: Weight of the newest delivery in a kind's average.
EWMA_WEIGHT: Final[float] = 0.2
#: Job kinds timed per process (more are forgotten: kinds come from messages).
MAX_KINDS: Final[int] = 256


class BatchSizer:
    """Which job kinds the next fetch may batch, from how long each took here.

    Args:
        limit: Most jobs per fetch (1: one at a time).
        budget_s: Wall time a batch may take.
        clock: Monotonic clock (injected by tests).
    """

    def __init__(
        self,
        limit: int,
        budget_s: float = BATCH_BUDGET_S,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self.limit = max(1, int(limit))
        self.budget_s = budget_s
        self.clock = clock
        #: Average seconds per delivery, by job kind.
        self.averages: dict[str, float] = {}
        self._short: tuple[str, ...] = ()

    def short_kinds(self) -> tuple[str, ...]:
        """The kinds a batch may hold (sorted; empty: one job per fetch)."""
        return self._short if self.limit > 1 else ()

    def size(self) -> int:
        """Most jobs the next fetch may take (1 while no kind is known to be short)."""
        return self.limit if self.short_kinds() else 1

    def observe(self, kind: str | None, seconds: float) -> None:
        """One delivery of ``kind`` took ``seconds`` (its job's run and its acknowledgement)."""
        if not kind:
            return
        averages = self.averages
        average = averages.get(kind)
        if average is None and len(averages) >= MAX_KINDS:
            averages.clear()
            self._short = ()
        average = seconds if average is None else average + EWMA_WEIGHT * (seconds - average)
        averages[kind] = average
        if (average <= SHORT_JOB_S) is not (kind in self._short):  # it changed sides
            self._short = tuple(sorted(k for k, s in averages.items() if s <= SHORT_JOB_S))

    def within_budget(self, started: float) -> bool:
        """Whether a batch begun at ``started`` (this clock) may start another job."""
        return self.clock() - started < self.budget_s


_sizer: BatchSizer | None = None


def sizer() -> BatchSizer | None:
    """This process's batch sizer (None: one job per fetch, the default outside solo
    workers)."""
    return _sizer


def configure(limit: int | None) -> None:
    """Fetch up to ``limit`` jobs at a time in this process (None or 1: one at a time)."""
    global _sizer
    _sizer = BatchSizer(limit) if limit and limit > 1 else None
