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

Any client of the broker can send a control command, so both check their argument first: a
whole number from 1 to ``MAX_RESIZE_STEP`` (the autoscaler's steps' ceiling), and a pool no bigger than
:data:`MAX_PREFORK_PROCESSES` (prefork) or :data:`MAX_GREEN_SLOTS` (gevent) after growing.
Anything else is refused with a reply that says why, and the pool is left as it was.
"""

from __future__ import annotations

from typing import Any

from celery.worker.control import control_command, nok, ok

from taskfleet.config.autoscale import MAX_RESIZE_STEP

GROW_NOW_COMMAND = "taskfleet_pool_grow"
SHRINK_NOW_COMMAND = "taskfleet_pool_shrink"
SHRUNK_PREFIX = "shrunk by "
MIN_PROCESSES = 1
#: The largest pool a grow may leave: ``TASKFLEET_CPU_CONCURRENCY``'s and
#: ``TASKFLEET_IO_CONCURRENCY``'s own ceilings.
MAX_PREFORK_PROCESSES = 512
MAX_GREEN_SLOTS = 10_000


def _bad_step(command: str, n: Any) -> str | None:
    """Why ``n`` is no argument for ``command`` (None when it is one)."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_RESIZE_STEP:
        return f"{command}: n must be a whole number from 1 to {MAX_RESIZE_STEP}, got {n!r}"
    return None


def _prefork(pool: Any) -> Any:
    """billiard's pool behind Celery's prefork pool (None for pools without processes)."""
    inner = getattr(pool, "_pool", None)
    return inner if inner is not None and hasattr(inner, "_iterinactive") else None


#: The reply to a resize of a pool that has no size (Celery's solo pool: one process).
NOT_RESIZABLE = (
    "{command}: a solo worker is one process and cannot be resized; its supervisor starts and "
    "stops workers instead (taskfleet up, see taskfleet.scheduler.slots)"
)


def _fixed(command: str, pool: Any) -> str | None:
    """Why ``pool`` cannot be resized at all (None when it can)."""
    return NOT_RESIZABLE.format(command=command) if not hasattr(pool, "grow") else None


def _too_big(pool: Any, n: int) -> str | None:
    """Why growing ``pool`` by ``n`` would make it too big (None when it would not)."""
    ceiling = MAX_PREFORK_PROCESSES if _prefork(pool) is not None else MAX_GREEN_SLOTS
    size = int(getattr(pool, "num_processes", 0) or 0)
    if size + n > ceiling:
        return f"{GROW_NOW_COMMAND}: {size} + {n} would exceed the pool's ceiling of {ceiling}"
    return None


@control_command(args=[("n", int)], signature="[N=1]")  # type: ignore[untyped-decorator]
def taskfleet_pool_grow(state: Any, n: int = 1, **_: Any) -> dict[str, str]:
    """Grow the pool by ``n`` and start the new processes immediately.

    Refused (the pool left as it was) unless ``n`` is 1..``MAX_RESIZE_STEP`` and the pool
    stays within its ceiling.
    """
    consumer = state.consumer
    if consumer.controller.autoscaler:
        return nok("taskfleet_pool_grow is not supported beside --autoscale")  # type: ignore[no-any-return]
    refusal = (
        _bad_step(GROW_NOW_COMMAND, n)
        or _fixed(GROW_NOW_COMMAND, consumer.pool)
        or _too_big(consumer.pool, n)
    )
    if refusal is not None:
        return nok(refusal)  # type: ignore[no-any-return]
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
    """Stop up to ``n`` idle pool processes in one pass; the reply says how many.

    Refused unless ``n`` is 1..``MAX_RESIZE_STEP``.
    """
    consumer = state.consumer
    if consumer.controller.autoscaler:
        return nok("taskfleet_pool_shrink is not supported beside --autoscale")  # type: ignore[no-any-return]
    refusal = _bad_step(SHRINK_NOW_COMMAND, n) or _fixed(SHRINK_NOW_COMMAND, consumer.pool)
    if refusal is not None:
        return nok(refusal)  # type: ignore[no-any-return]
    inner = _prefork(consumer.pool)
    if inner is None:  # gevent: no processes
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
