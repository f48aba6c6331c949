"""Keep the cycle collector's full passes short in long-running worker processes.

A worker imports Celery, kombu, pydantic, SQLAlchemy and taskfleet: ~120,000 tracked objects
that live as long as the process. CPython's full (generation 2) collection walks every one of
them, and while it runs the process does nothing else. Measured in a prefork worker's main
process at 1,000 jobs/s: full passes of 60-135 ms, each a stall in which no job is dispatched
or acknowledged.

:func:`settle_heap` collects once, then moves every surviving object to the permanent
generation (``gc.freeze``), which later collections skip: afterwards the same process's full
passes took 1.5-16 ms. It is called when a process has finished starting (the worker's main
process before it forks its pool and again when ready, each pool process after its own
set-up, the result persister): what exists then lives as long as the process. Freezing before
the fork also keeps those objects' pages shared with the children, since collections no
longer write to their headers. Objects created later are collected as usual. The price: a
start-up object that later becomes cyclic garbage is never freed, a bounded cost paid once.
``TASKFLEET_SETTLE_HEAP=false`` leaves the collector as CPython configures it.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def settle_heap(enabled: bool = True) -> int:
    """Collect, then exempt every live object from later collections.

    Args:
        enabled: The ``settle_heap`` setting; when False nothing happens.

    Returns:
        How many objects the permanent generation holds afterwards (0 when disabled).
    """
    if not enabled:
        return 0
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("taskfleet: %d start-up objects exempted from garbage collection", frozen)
    return frozen
