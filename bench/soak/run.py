"""One soak: feed a fleet batch after batch, and sample every process at each mark.

The producer keeps the queues at most one batch deep (a soak measures the workers, not a
backlog sitting in Redis). At every ``every`` jobs it waits until the queues are empty and
nothing is unacknowledged, then samples each process's USS and Redis's memory.

After the last mark, on an autoscaled fleet, the late-fork probe waits until the autoscaler
has shrunk the CPU pool to one process, then feeds one more batch: the pool process the
autoscaler forks for it is compared with those forked at start-up.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

from bench.common import poll_until
from bench.soak.memory import ProcessMemory, sample_tree
from bench.soak.systems import SoakSystem, reservoir

log = logging.getLogger("bench.soak")

DEFAULT_BATCH = 5_000
DRAIN_TIMEOUT_S = 300.0
BACKLOG_TIMEOUT_S = 300.0
SHRINK_TIMEOUT_S = 300.0
DURABLE_TIMEOUT_S = 900.0
READ_SAMPLE = 1_000
POLL_S = 0.05
CPU_POOL_ROLE = "cpu pool"


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
    processes = sample_tree(system.root_pid())
    mark = Mark(
        jobs, time.monotonic() - started, processes, _redis_used(system), system.result_keys()
    )
    fleet = sum(p.uss for p in processes) / 2**20
    log.info(
        "%s %s jobs: %.0f s, fleet USS %.1f MiB", system.name, f"{jobs:,}", mark.seconds, fleet
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


def _pool_pids(processes: list[ProcessMemory]) -> set[int]:
    return {p.pid for p in processes if p.role == CPU_POOL_ROLE}


def _late_fork(system: SoakSystem, total: int, every: int, batch: int, result: SoakResult) -> int:
    """Wait for the autoscaler to shrink the CPU pool, feed a batch, sample the new process."""
    early = _pool_pids(result.marks[0].processes)
    shrink_started = time.monotonic()
    poll_until(
        lambda: len(_pool_pids(sample_tree(system.root_pid()))) <= 1,
        SHRINK_TIMEOUT_S,
        "the autoscaler to shrink the CPU pool",
        1.0,
    )
    shrunk_s = time.monotonic() - shrink_started
    before = _pool_pids(sample_tree(system.root_pid()))
    extra = min(every, 10 * batch)
    _feed(system, total, extra, batch, [], random.Random(0))
    mark = _mark(system, total + extra, shrink_started)
    forked = [p for p in mark.processes if p.role == CPU_POOL_ROLE and p.pid not in before]
    first = [p for p in result.marks[0].processes if p.pid in early]
    last_seen = {p.pid: p for m in result.marks for p in m.processes if p.pid in early}
    result.late_fork = {
        "jobs": extra,
        "shrunk_after_s": shrunk_s,
        "late": [vars(p) for p in forked],
        "early_at_first_mark": [vars(p) for p in first],
        "early_at_last_sight": [vars(p) for p in last_seen.values()],
    }
    return extra


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
