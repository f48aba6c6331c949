"""The scaling policy: pure functions composed into one ``decide`` (no I/O, no clock).

Parts, each testable alone:

* :func:`backlog_need` -- processes needed so each carries ``target_backlog`` jobs;
* :func:`predicted_need` -- the same, for the depth the recent trend projects
  ``predict_horizon`` seconds ahead, and for the arrival rate at the measured per-process
  throughput (scales up before the backlog peaks);
* :func:`apply_hysteresis` -- shrink only when the load is clearly below the current size;
* :func:`apply_cooldowns` -- separate cooldowns after growing and after any change;
* :func:`bounded_target` -- steps, then per-pool min/max (per-worker bounds via spreading);
* :func:`spread` -- per-worker changes, evenly, never outside a worker's min/max.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from taskfleet.config.autoscale import PoolLimits
from taskfleet.scheduler.model import (
    Action,
    Decision,
    PoolMemory,
    PoolSample,
    TrendPoint,
    WorkerView,
)


def backlog_need(backlog: float, target_backlog: float) -> int:
    """Processes needed so that each carries at most ``target_backlog`` jobs."""
    return math.ceil(max(backlog, 0) / target_backlog)


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of ``(x, y)`` points (0 with fewer than two distinct x)."""
    if len(points) < 2:
        return 0.0
    mean_x = sum(p[0] for p in points) / len(points)
    mean_y = sum(p[1] for p in points) / len(points)
    var = sum((p[0] - mean_x) ** 2 for p in points)
    if var == 0:
        return 0.0
    return sum((p[0] - mean_x) * (p[1] - mean_y) for p in points) / var


def predicted_need(
    sample: PoolSample, trend: Sequence[TrendPoint], limits: PoolLimits, horizon: float
) -> tuple[int, str]:
    """Processes the recent trend calls for ``horizon`` seconds ahead, and why.

    Two views, the larger wins: the depth projected along its recent slope, and the
    processes the arrival rate needs at the throughput one process showed.
    """
    points = [(p.at, float(p.depth)) for p in trend] + [(sample.at, float(sample.depth))]
    depth_slope = slope(points)
    projected = sample.backlog + max(depth_slope, 0.0) * horizon
    by_depth = backlog_need(projected, limits.target_backlog)
    by_rate = 0
    current = sample.concurrency
    if current and sample.completion_rate > 0 and sample.arrival_rate > sample.completion_rate:
        per_process = sample.completion_rate / current
        by_rate = math.ceil(sample.arrival_rate / per_process)
    if by_rate > by_depth:
        return by_rate, (
            f"arrivals {sample.arrival_rate:.1f}/s exceed completions "
            f"{sample.completion_rate:.1f}/s: {by_rate} processes keep up"
        )
    return by_depth, f"depth trend {depth_slope:+.1f}/s projects backlog {projected:.0f}"


def apply_hysteresis(
    wanted: int, current: int, backlog: float, limits: PoolLimits, band: float
) -> int:
    """Hold the current size unless the load clearly fits fewer processes.

    Shrinking is allowed only to the size at which each process would still carry no more
    than ``target_backlog * (1 - band)`` jobs, so a load near a boundary does not flap.
    """
    if wanted >= current:
        return wanted
    relaxed = backlog_need(backlog, limits.target_backlog * (1 - band)) if band < 1 else current
    return min(current, max(wanted, relaxed))


def apply_cooldowns(
    wanted: int, current: int, memory: PoolMemory, now: float, up_s: float, down_s: float
) -> tuple[int, str | None]:
    """Hold the size while a cooldown runs; returns the size and the reason when held.

    Growing waits ``up_s`` after the last growth; shrinking waits ``down_s`` after the last
    growth, then proceeds by ``step_down`` per tick (so a drained pool returns to its minimum
    shortly after the cooldown, not one cooldown per step).
    """
    if wanted > current and memory.last_up_at is not None and now - memory.last_up_at < up_s:
        return current, f"scale-up cooldown ({up_s - (now - memory.last_up_at):.1f}s left)"
    if wanted < current and memory.last_up_at is not None and now - memory.last_up_at < down_s:
        return current, f"scale-down cooldown ({down_s - (now - memory.last_up_at):.1f}s left)"
    return wanted, None


def bounded_target(wanted: int, current: int, workers: int, limits: PoolLimits) -> int:
    """``wanted`` limited by the per-worker steps and the pool's and workers' min/max."""
    low = max(limits.pool_min, limits.worker_min * workers)
    high = min(limits.pool_max, limits.worker_max * workers)
    if wanted > current:
        wanted = min(wanted, current + limits.step_up * workers)
    elif wanted < current:
        wanted = max(wanted, current - limits.step_down * workers)
    return max(low, min(high, wanted)) if low <= high else high


def spread(workers: Sequence[WorkerView], delta: int, limits: PoolLimits) -> dict[str, int]:
    """Per-worker changes adding up to ``delta`` (or as close as the bounds allow).

    Growth goes one at a time to the smallest worker, shrinking comes from the largest, so
    the pool stays even; no worker leaves ``[worker_min, worker_max]`` or moves by more than
    its step. Workers that cannot be resized (solo) are left as they are.
    """
    sizes = {w.hostname: w.concurrency for w in workers if w.resizable}
    moved = dict.fromkeys(sizes, 0)
    step = 1 if delta > 0 else -1
    for _ in range(abs(delta)):
        if step > 0:
            room = [h for h in sizes if sizes[h] < limits.worker_max and moved[h] < limits.step_up]
            pick = min(room, key=lambda h: (sizes[h], h), default=None)
        else:
            room = [
                h for h in sizes if sizes[h] > limits.worker_min and -moved[h] < limits.step_down
            ]
            pick = max(room, key=lambda h: (sizes[h], h), default=None)
        if pick is None:
            break
        sizes[pick] += step
        moved[pick] += step
    return {h: d for h, d in moved.items() if d}


def desired_replicas(wanted: int, limits: PoolLimits) -> int:
    """Hosts (workers at their max) the load calls for: the figure an HPA/KEDA scales on."""
    return max(1, math.ceil(max(wanted, limits.pool_min) / limits.worker_max))


def decide(
    sample: PoolSample,
    memory: PoolMemory,
    limits: PoolLimits,
    *,
    hysteresis: float,
    up_cooldown: float,
    down_cooldown: float,
    horizon: float,
) -> Decision:
    """One pool's decision for this tick: action, target, per-worker changes and the reason."""
    current = sample.concurrency
    if not sample.workers:
        need = backlog_need(sample.backlog, limits.target_backlog)
        return Decision(
            sample.pool,
            "hold",
            0,
            0,
            {},
            desired_replicas(need, limits),
            "no live worker answered",
            need,
        )
    by_backlog = backlog_need(sample.backlog, limits.target_backlog)
    by_trend, trend_reason = predicted_need(sample, memory.trend, limits, horizon)
    if by_trend > by_backlog:
        wanted, reason = by_trend, f"predictive: {trend_reason}"
    else:
        wanted = by_backlog
        reason = (
            f"backlog {sample.backlog} (depth {sample.depth}, in flight {sample.in_flight}) "
            f"needs {by_backlog} at {limits.target_backlog:g}/process"
        )
    replicas = desired_replicas(wanted, limits)
    steady = apply_hysteresis(wanted, current, sample.backlog, limits, hysteresis)
    if steady == current and wanted < current:
        reason += f"; hysteresis holds {current}"
    steady, held = apply_cooldowns(steady, current, memory, sample.at, up_cooldown, down_cooldown)
    if held:
        reason += f"; {held}"
    target = bounded_target(steady, current, len(sample.workers), limits)
    if target != steady:
        reason += f"; bounded to {target} (steps, min/max)"
    changes = spread(sample.workers, target - current, limits)
    target = current + sum(changes.values())
    action: Action = "grow" if target > current else "shrink" if target < current else "hold"
    return Decision(sample.pool, action, current, target, changes, replicas, reason, wanted)
