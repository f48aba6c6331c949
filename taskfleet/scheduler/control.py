"""Remote-control commands that resize a pool *now*, and exactly.

Celery's ``pool_grow`` on a prefork worker only raises billiard's target size; the new
processes are forked by ``maintain_pool``, which a timer runs every 5 s, so a burst runs on
the old size for up to 5 s (measured: 3 s of the 12 s drain in bench W7). Celery's own
autoscaler calls ``maintain_pool()`` right after growing; this command does the same for
taskfleet's autoscaler. On pools without processes (gevent) ``maintain_pool`` is a no-op.

Shrinking has the mirror problem: billiard terminates an idle process but keeps it in its
list until it is reaped, so a second ``pool_shrink`` before that picks the same process again
and only lowers the target (measured: 3 shrinks of 1 stopped 1 process of 4). One command
that stops ``n`` distinct idle processes at once, and says how many, is exact.
"""

from __future__ import annotations

from typing import Any

from celery.worker.control import control_command, nok, ok

GROW_NOW_COMMAND = "taskfleet_pool_grow"
SHRINK_NOW_COMMAND = "taskfleet_pool_shrink"
SHRUNK_PREFIX = "shrunk by "
MIN_PROCESSES = 1


@control_command(args=[("n", int)], signature="[N=1]")  # type: ignore[untyped-decorator]
def taskfleet_pool_grow(state: Any, n: int = 1, **_: Any) -> dict[str, str]:
    """Grow the pool by ``n`` and start the new processes immediately."""
    consumer = state.consumer
    if consumer.controller.autoscaler:
        return nok("taskfleet_pool_grow is not supported beside --autoscale")  # type: ignore[no-any-return]
    consumer.pool.grow(n)
    consumer._update_prefetch_count(n)
    hub = getattr(consumer.controller, "hub", None)
    if hub is not None:  # fork on the loop's next turn, after this reply has gone out
        hub.call_soon(consumer.pool.maintain_pool)
    else:
        consumer.pool.maintain_pool()
    return ok("pool grown")  # type: ignore[no-any-return]


@control_command(args=[("n", int)], signature="[N=1]")  # type: ignore[untyped-decorator]
def taskfleet_pool_shrink(state: Any, n: int = 1, **_: Any) -> dict[str, str]:
    """Stop up to ``n`` idle pool processes in one pass; the reply says how many."""
    consumer = state.consumer
    if consumer.controller.autoscaler:
        return nok("taskfleet_pool_shrink is not supported beside --autoscale")  # type: ignore[no-any-return]
    inner = getattr(consumer.pool, "_pool", None)
    if inner is None or not hasattr(inner, "_iterinactive"):  # gevent: no processes
        consumer.pool.shrink(n)
        count = n
    else:
        count = _stop_idle_processes(inner, n)
        if count == 0:
            return nok("no idle process to stop")  # type: ignore[no-any-return]
    consumer._update_prefetch_count(-count)
    return ok(f"{SHRUNK_PREFIX}{count}")  # type: ignore[no-any-return]


def _stop_idle_processes(pool: Any, n: int) -> int:
    """billiard's ``Pool.shrink``, skipping processes already told to stop.

    Written out because billiard's own loop picks a stopping-but-not-yet-reaped process
    again and lowers the pool's target without stopping anything.
    """
    running = [p for p in pool._pool if not getattr(p, "_controlled_termination", False)]
    budget = min(n, len(running) - MIN_PROCESSES)  # never stop the last process
    stopped = 0
    for process in list(pool._iterinactive()):
        if stopped >= budget:
            break
        if getattr(process, "_controlled_termination", False):
            continue
        pool._processes -= 1
        if pool._putlock:
            pool._putlock.shrink()
        process.terminate_controlled()
        pool.on_shrink(1)
        stopped += 1
    return stopped
