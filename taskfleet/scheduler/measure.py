"""Measure each pool: queue depth, in-flight jobs, arrival and completion rates, live workers.

Workers are found with Celery's ``inspect`` (bounded by a timeout): the first broadcast
(``active_queues``) waits the whole timeout to hear every worker, the next three are
addressed to the workers that answered and return as soon as all of them reply. A worker
missing from any answer (it vanished mid-tick) is left out of this tick entirely.

Rates come from conservation, so workers need no hooks: completed = accepted (``stats``
``total``) - running; arrived = completed + growth of (depth + reserved + running).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import Celery

from taskfleet.routing.depth import queue_depths
from taskfleet.routing.topology import DEFAULT_INBOX, Topology
from taskfleet.scheduler.model import PoolSample, WorkerView
from taskfleet.workers.pools import pool_kind

POOLS: tuple[str, ...] = ("cpu", "io")
#: Addressed inspect calls per command before a silent worker is left out of the tick.
ASK_ATTEMPTS = 2


@dataclass(frozen=True)
class WorkerReport:
    """Everything one worker answered this tick."""

    hostname: str
    queues: frozenset[str]
    stats: dict[str, Any]
    running: int
    reserved: int

    @property
    def prefork(self) -> bool:
        """Whether its pool is prefork (whose ``max-concurrency`` is not updated by grow)."""
        return pool_kind(self.implementation) == "prefork"

    @property
    def resizable(self) -> bool:
        """Whether remote control can resize its pool (not Celery's solo pool)."""
        return pool_kind(self.implementation) != "solo"

    @property
    def implementation(self) -> str:
        """Its pool's ``module:Class``, as ``inspect stats`` reports it ("" if missing)."""
        return str(self.stats.get("pool", {}).get("implementation", ""))

    @property
    def accepted(self) -> int:
        """Jobs this worker has started since it booted."""
        return int(sum(self.stats.get("total", {}).values()))


def pool_queues(topology: Topology, pool: str) -> tuple[str, ...]:
    """Queues whose depth counts as a pool's backlog (the I/O pool also serves the inbox)."""
    if pool == "cpu":
        return (topology.cpu_queue,)
    return (topology.io_queue, DEFAULT_INBOX)


def _ask(app: Celery, command: str, hosts: list[str], timeout: float) -> dict[str, Any]:
    """``inspect().<command>()`` addressed to ``hosts``, asking the silent ones once more.

    Addressed calls return after as many events as hosts; a stray event on the reply queue
    can end one early, so hosts missing from the answer get a second, bounded chance.
    """
    answers: dict[str, Any] = {}
    for _ in range(ASK_ATTEMPTS):
        missing = [h for h in hosts if h not in answers]
        if not missing:
            break
        inspect = app.control.inspect(destination=missing, timeout=timeout)
        answers |= getattr(inspect, command)() or {}
    return answers


def inspect_workers(app: Celery, timeout: float) -> list[WorkerReport]:
    """Every worker that answered all four ``inspect`` calls within ``timeout`` each."""
    queues = app.control.inspect(timeout=timeout).active_queues() or {}
    hosts = sorted(queues)
    if not hosts:
        return []
    stats = _ask(app, "stats", hosts, timeout)
    active = _ask(app, "active", hosts, timeout)
    reserved = _ask(app, "reserved", hosts, timeout)
    return [
        WorkerReport(
            hostname=host,
            queues=frozenset(q.get("name", "") for q in queues[host] or []),
            stats=stats[host],
            running=len(active[host] or []),
            reserved=len(reserved[host] or []),
        )
        for host in hosts
        if host in stats and host in active and host in reserved
    ]


def concurrency_of(report: WorkerReport, prefork_sizes: dict[str, tuple[int, int]]) -> int:
    """A worker's current concurrency: what we last set (same pid), else what it reports."""
    reported = int(report.stats.get("pool", {}).get("max-concurrency", 0) or 0)
    if report.prefork:
        pid = int(report.stats.get("pid", 0) or 0)
        known = prefork_sizes.get(report.hostname)
        if known is not None and known[0] == pid:
            return known[1]
    return reported


def sample_pool(
    pool: str,
    now: float,
    depth: int,
    members: list[WorkerReport],
    prefork_sizes: dict[str, tuple[int, int]],
    previous: dict[str, Any] | None,
) -> tuple[PoolSample, dict[str, Any]]:
    """A pool's sample, and the counters to keep for the next tick's rates."""
    running = sum(m.running for m in members)
    in_flight = running + sum(m.reserved for m in members)
    work = depth + in_flight
    completed = {
        m.hostname: (int(m.stats.get("pid", 0) or 0), m.accepted - m.running) for m in members
    }
    arrival = completion = 0.0
    if previous and now > previous["at"]:
        elapsed = now - previous["at"]
        before = {h: tuple(v) for h, v in previous.get("completed", {}).items()}
        done = sum(
            max(0, count - before[h][1])
            for h, (pid, count) in completed.items()
            if h in before and before[h][0] == pid
        )
        completion = done / elapsed
        arrival = max(0.0, (work - previous["work"] + done) / elapsed)
    workers = tuple(
        WorkerView(
            m.hostname,
            concurrency_of(m, prefork_sizes),
            int(m.stats.get("pid", 0) or 0),
            m.prefork,
            m.resizable,
        )
        for m in members
    )
    sample = PoolSample(pool, now, depth, in_flight, arrival, completion, workers)
    return sample, {"at": now, "work": work, "completed": completed}


def measure(
    app: Celery,
    topology: Topology,
    timeout: float,
    now: float,
    prefork_sizes: dict[str, tuple[int, int]],
    counters: dict[str, Any],
) -> tuple[dict[str, PoolSample], dict[str, Any]]:
    """Samples of both pools and the counters for the next tick.

    Raises:
        Exception: whatever the broker client raises when it is unreachable (the tick
            catches it, logs and skips).
    """
    reports = inspect_workers(app, timeout)
    with app.connection_for_read() as conn:
        depths = queue_depths(conn, {q for p in POOLS for q in pool_queues(topology, p)})
    samples: dict[str, PoolSample] = {}
    new_counters: dict[str, Any] = {}
    for pool in POOLS:
        work_queue = topology.queue_for_pool(pool)  # type: ignore[arg-type]
        members = [r for r in reports if work_queue in r.queues]
        depth = sum(depths[q] for q in pool_queues(topology, pool))
        samples[pool], new_counters[pool] = sample_pool(
            pool, now, depth, members, prefork_sizes, counters.get(pool)
        )
    return samples, new_counters
