"""One soak: feed a fleet batch after batch, and sample every process at each mark.

The producer keeps the queues at most one batch deep (a soak measures the workers, not a
backlog sitting in Redis). At every ``every`` jobs it waits until the queues are empty and
nothing is unacknowledged, then samples each process's USS and Redis's memory.

After the last mark, on an autoscaled fleet, the late-start probe waits until the autoscaler
has shrunk the CPU pool to one process, then feeds more jobs: the CPU processes started for
them are compared with those started at start-up. With a prefork pool that process is a pool
process the CPU worker forks; with solo workers (``taskfleet up``'s default) it is a whole
``celery worker -P solo`` the supervisor starts at the autoscaler's request (and "one process"
means one solo worker left).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

from bench.common import BenchTimeout, poll_until
from bench.soak.memory import (
    SIDECAR_MODULE,
    SOLO_SUFFIX,
    SUPERVISOR,
    ProcessMemory,
    role_of,
    sample_tree,
)
from bench.soak.systems import SoakSystem, reservoir

log = logging.getLogger("bench.soak")

DEFAULT_BATCH = 5_000
DRAIN_TIMEOUT_S = 300.0
BACKLOG_TIMEOUT_S = 300.0
SHRINK_TIMEOUT_S = 300.0
#: Longest the late-start probe feeds jobs waiting for the supervisor to start a solo worker.
LATE_START_TIMEOUT_S = 60.0
#: Longest a mark waits for a solo worker being started to boot before sampling it anyway.
BOOT_TIMEOUT_S = 30.0
DURABLE_TIMEOUT_S = 900.0
READ_SAMPLE = 1_000
POLL_S = 0.05
CPU_POOL_ROLE = "cpu pool"
CPU_SOLO_ROLE = "cpu worker (solo)"


@dataclass
class Mark:
    """Every process, and Redis, after ``jobs`` jobs."""

    jobs: int
    seconds: float
    processes: list[ProcessMemory]
    redis_used: int
    result_keys: int


@dataclass
class SoakResult:
    """What one soak of one system measured."""

    system: str
    label: str
    marks: list[Mark] = field(default_factory=list)
    late_fork: dict[str, Any] = field(default_factory=dict)
    final: dict[str, Any] = field(default_factory=dict)


def _redis_used(system: SoakSystem) -> int:
    return int(system.redis.info("memory")["used_memory"])


def _drained(system: SoakSystem) -> bool:
    system.group.check_alive()
    return system.backlog() == 0 and system.in_flight() == 0


def _mark(system: SoakSystem, jobs: int, started: float) -> Mark:
    poll_until(lambda: _drained(system), DRAIN_TIMEOUT_S, f"{system.name} drain at {jobs:,}")
    _wait_booted(system, jobs)
    processes = sample_tree(system.root_pid())
    mark = Mark(
        jobs, time.monotonic() - started, processes, _redis_used(system), system.result_keys()
    )
    fleet = sum(p.uss for p in processes) / 2**20
    _, role = cpu_unit_role(processes)
    units = len(_unit_pids(processes, role))
    log.info(
        "%s %s jobs: %.0f s, fleet USS %.1f MiB, %d processes%s",
        system.name,
        f"{jobs:,}",
        mark.seconds,
        fleet,
        len(processes),
        f" ({units} {role})" if units else "",
    )
    return mark


def _feed(system: SoakSystem, start: int, n: int, batch: int, sample: list[str], rng: Any) -> None:
    """Publish ``n`` jobs from index ``start``, never more than one batch ahead of the workers."""
    done = 0
    while done < n:
        poll_until(lambda: system.backlog() <= batch, BACKLOG_TIMEOUT_S, "backlog", POLL_S)
        size = min(batch, n - done)
        ids = system.publish(start + done, size)
        reservoir(sample, ids, start + done, READ_SAMPLE, rng)
        done += size


def cpu_unit_role(processes: list[ProcessMemory]) -> tuple[str, str]:
    """The CPU pool's kind and the role of its resizable processes in a sample.

    Returns:
        ``("solo", "cpu worker (solo)")`` when the CPU workers run ``-P solo``, else
        ``("prefork", "cpu pool")``.
    """
    if any(p.role == CPU_SOLO_ROLE for p in processes):
        return "solo", CPU_SOLO_ROLE
    return "prefork", CPU_POOL_ROLE


def _unit_pids(processes: list[ProcessMemory], role: str) -> set[int]:
    return {p.pid for p in processes if p.role == role}


def _serving(system: SoakSystem, role: str) -> set[int]:
    """The CPU units that serve: a standby worker booted ahead of need is not one."""
    return _unit_pids(sample_tree(system.root_pid()), role) - system.standby_pids()


def _late_fork(system: SoakSystem, total: int, every: int, batch: int, result: SoakResult) -> int:
    """Wait for the autoscaler to shrink the CPU pool, feed more jobs, sample the new processes.

    Prefork: ``extra`` more jobs; the pool processes the CPU worker forks for them. Solo: the
    solo workers that begin to serve, the standby the supervisor promotes first and those it
    starts (a retired one simply leaves the tree; the first, with the persister, stays; a
    standby serving nothing yet is not counted). A solo worker takes seconds to boot, and a fast pool drains a batch
    in less, so jobs are fed until a new worker is up (its heartbeat sidecar runs), then
    ``extra`` more, which it shares: it is sampled after serving, not half-way through boot.

    Returns:
        The jobs fed.
    """
    pool, role = cpu_unit_role(result.marks[0].processes)
    early = _unit_pids(result.marks[0].processes, role)
    shrink_started = time.monotonic()
    unit = "solo worker" if pool == "solo" else "process"
    poll_until(
        lambda: len(_serving(system, role)) <= 1,
        SHRINK_TIMEOUT_S,
        f"the autoscaler to shrink the CPU pool to one {unit}",
        1.0,
    )
    shrunk_s = time.monotonic() - shrink_started
    before = _serving(system, role)
    extra = min(every, 10 * batch)
    fed_at, fed_wall = time.monotonic(), time.time()
    if pool == "solo":
        fed, ready_after = _feed_until_started(system, total, extra, batch, before)
    else:
        _feed(system, total, extra, batch, [], random.Random(0))
        fed, ready_after = extra, None
    mark = _mark(system, total + fed, shrink_started)
    standby = system.standby_pids()
    forked = [p for p in mark.processes if p.role == role and p.pid not in before | standby]
    first = [p for p in result.marks[0].processes if p.pid in early]
    last_seen = {p.pid: p for m in result.marks for p in m.processes if p.pid in early}
    result.late_fork = {
        "pool": pool,
        "jobs": fed,
        "jobs_before_ready": ready_after,
        "shrunk_after_s": shrunk_s,
        "probe_s": time.monotonic() - fed_at,
        "late": [vars(p) for p in forked],
        "late_started_after_s": [_started_after(p.pid, fed_wall) for p in forked],
        "early_at_first_mark": [vars(p) for p in first],
        "early_at_last_sight": [vars(p) for p in last_seen.values()],
    }
    log.info(
        "%s late start (%s): %d new CPU process(es) for %s jobs",
        system.name,
        pool,
        len(forked),
        f"{fed:,}",
    )
    return fed


def _feed_until_started(
    system: SoakSystem, start: int, extra: int, batch: int, before: set[int]
) -> tuple[int, int | None]:
    """Feed batches until a solo worker not in ``before`` is up, then ``extra`` more jobs.

    Gives up waiting after :data:`LATE_START_TIMEOUT_S` (then ``extra`` jobs at least).

    Returns:
        The jobs fed, and how many of them went before a new worker was up (``None``: none
        came up).
    """
    rng = random.Random(0)
    deadline = time.monotonic() + LATE_START_TIMEOUT_S
    fed = 0
    ready_after: int | None = None
    while True:
        if ready_after is None and _started_workers(
            system.root_pid(), before | system.standby_pids()
        ):
            ready_after = fed
        if ready_after is not None:
            if fed - ready_after >= extra:
                return fed, ready_after
        elif fed >= extra and time.monotonic() >= deadline:
            return fed, None
        size = batch if ready_after is None else min(batch, ready_after + extra - fed)
        _feed(system, start + fed, size, batch, [], rng)
        fed += size


def _solo_workers(root_pid: int) -> dict[int, bool]:
    """Solo workers under ``root_pid``, each with whether it is up: its heartbeat sidecar runs
    (a solo worker starts it once booted, before it consumes)."""
    try:
        descendants = psutil.Process(root_pid).children(recursive=True)
    except psutil.Error:
        return {}
    out: dict[int, bool] = {}
    for proc in descendants:
        try:
            parent = proc.parent()
            parent_role = SUPERVISOR if parent is None else role_of(parent.cmdline(), SUPERVISOR)
            if not role_of(proc.cmdline(), parent_role).endswith(SOLO_SUFFIX):
                continue
            out[proc.pid] = any(SIDECAR_MODULE in child.cmdline() for child in proc.children())
        except psutil.Error:
            continue
    return out


def _started_workers(root_pid: int, before: set[int]) -> set[int]:
    """Solo workers that are up and not in ``before``."""
    return {pid for pid, up in _solo_workers(root_pid).items() if up and pid not in before}


def _wait_booted(system: SoakSystem, jobs: int) -> None:
    """Before a mark: let every solo worker being started finish booting (at most
    :data:`BOOT_TIMEOUT_S`), so that none is sampled half-way through its imports."""
    try:
        poll_until(
            lambda: all(_solo_workers(system.root_pid()).values()),
            BOOT_TIMEOUT_S,
            "solo workers to boot",
            0.2,
        )
    except BenchTimeout:
        log.warning("%s %s jobs: a solo worker is still booting", system.name, f"{jobs:,}")


def _started_after(pid: int, since: float) -> float | None:
    """Seconds from ``since`` (wall clock) to the process's start, ``None`` if it is gone."""
    try:
        return float(psutil.Process(pid).create_time()) - since
    except psutil.Error:
        return None


def soak(system: SoakSystem, total: int, every: int, batch: int = DEFAULT_BATCH) -> SoakResult:
    """Run ``total`` jobs through a started ``system``, sampling every ``every`` jobs.

    Args:
        system: The fleet, started.
        total: Jobs to run.
        every: Jobs between two marks.
        batch: Jobs per publish call.

    Returns:
        The marks, the late-fork probe (autoscaled fleets) and the final checks.
    """
    result = SoakResult(system.name, system.label)
    rng = random.Random(0)
    sample: list[str] = []
    start_used = _redis_used(system)
    started = time.monotonic()
    published = 0
    while published < total:
        n = min(every, total - published)
        _feed(system, published, n, batch, sample, rng)
        published += n
        result.marks.append(_mark(system, published, started))
    elapsed = result.marks[-1].seconds
    if system.autoscaled:
        published += _late_fork(system, total, every, batch, result)
    _final(system, result, published, start_used, sample)
    result.final["jobs_per_s"] = total / elapsed
    return result


def _final(
    system: SoakSystem, result: SoakResult, published: int, start_used: int, sample: list[str]
) -> None:
    """Redis memory, durable rows and a read-back of a random sample of the run's results."""
    last = result.marks[-1]
    keys = last.result_keys
    final: dict[str, Any] = {
        "published": published,
        "redis_used_bytes": last.redis_used,
        "result_keys": keys,
        "bytes_per_result": (last.redis_used - start_used) / keys if keys else None,
    }
    if system.durable_results() is not None:
        target = published  # the warm-up's rows come on top
        poll_until(
            lambda: (system.durable_results() or 0) >= target,
            DURABLE_TIMEOUT_S,
            f"{target:,} durable results",
            1.0,
        )
        final["durable_rows"] = system.durable_results()
        # Read half the sample with its Redis copy gone: those must come from Postgres.
        dropped = sample[: len(sample) // 2]
        if dropped:
            system.redis.delete(*[f"celery-task-meta-{i}" for i in dropped])
        final["read_back_from_durable"] = [system.readable(dropped), len(dropped)]
        sample = sample[len(dropped) :]
    final["read_back"] = [system.readable(sample), len(sample)]
    result.final = final
