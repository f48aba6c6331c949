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
A prefork child settles without collecting first (``collect=False``): everything it inherits
moves to the permanent generation untouched. A collection would write to the header of every
object the parent created since its own last freeze, copying those pages into the child, and
more of them the longer the parent has run. The inherited garbage it no longer frees is what
the parent had not collected yet: bounded, and shared. (W8, ``python -m bench.soak``: over a
million jobs a child's USS settles at 19-22 MiB whenever it was forked; most of that is pages
the parent rewrote after the fork, which no setting of the child's collector changes.)
``TASKFLEET_SETTLE_HEAP=false`` leaves the collector as CPython configures it.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def settle_heap(enabled: bool = True, *, collect: bool = True) -> int:
    """Collect, then exempt every live object from later collections.

    Args:
        enabled: The ``settle_heap`` setting; when False nothing happens.
        collect: Collect first. A freshly forked child passes False (see the module doc).

    Returns:
        How many objects the permanent generation holds afterwards (0 when disabled).
    """
    if not enabled:
        return 0
    if collect:
        gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("taskfleet: %d start-up objects exempted from garbage collection", frozen)
    return frozen
