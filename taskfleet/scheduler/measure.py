"""Measure each pool: queue depth, in-flight jobs, arrival and completion rates, live workers.

Workers are found with Celery's ``inspect`` (bounded by a timeout): the first broadcast
(``active_queues``) waits the whole timeout to hear every worker, the next calls are
addressed to the workers that answered and return as soon as all of them reply. A worker
missing from any answer (it vanished mid-tick) is left out of this tick entirely. The first
addressed call after a broadcast is often answered only at its timeout (on Redis, most ticks
here: the worker replies at once, the caller gets the reply late or not at all), so a
``stats`` asked first carried counts up to a timeout older than ``active``'s (measured: 12
jobs behind on a pool completing 20/s); an addressed ``ping`` takes that wait instead.

Rates come from conservation, so workers need no hooks: completed = accepted (``stats``
``total``) - running; arrived = completed + growth of (depth + reserved + running).

The counts are read at the end of the inspection (``stats``, ``active``, ``reserved`` and the
queue depths within milliseconds of each other), one to two inspect timeouts after the
tick's ``now`` (more if a worker has to be asked again). That moment is the
sample's ``measured_at``; the rates are per second between two such moments, so the jitter
of the inspection does not enter them, and capacity planning knows when the backlog it
drains was counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from celery import Celery

from taskfleet.routing.depth import queue_depths
from taskfleet.routing.topology import DEFAULT_INBOX, Topology
from taskfleet.scheduler.model import PoolSample, WorkerView
from taskfleet.scheduler.slots import SlotGroup, node_groups
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
    app.control.inspect(destination=hosts, timeout=timeout).ping()  # the late first reply
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


def worker_views(
    members: list[WorkerReport],
    prefork_sizes: dict[str, tuple[int, int]],
    groups: dict[str, SlotGroup],
) -> tuple[WorkerView, ...]:
    """The pool's resizable units: each worker that answered, except that the solo workers of
    a slot group (``groups``: node name -> group) count as one worker, the group, of the
    group's size. A group is in the view even if none of its workers answered: a solo worker
    answers nothing while it runs a job, so a group whose every worker is busy is silent."""
    views: list[WorkerView] = []
    for m in members:
        if m.hostname in groups and not m.resizable:
            continue
        pid = int(m.stats.get("pid", 0) or 0)
        views.append(
            WorkerView(m.hostname, concurrency_of(m, prefork_sizes), pid, m.prefork, m.resizable)
        )
    for group in {g.group: g for g in groups.values()}.values():
        views.append(WorkerView(group.group, group.size, 0, False, True, slots=True))
    return tuple(views)


def silent_slots(members: list[WorkerReport], groups: dict[str, SlotGroup]) -> int:
    """Slot-group workers that did not answer: each counts as running one job."""
    answered = {m.hostname for m in members}
    return sum(1 for node in groups if node not in answered)


def sample_pool(
    pool: str,
    now: float,
    depth: int,
    members: list[WorkerReport],
    prefork_sizes: dict[str, tuple[int, int]],
    previous: dict[str, Any] | None,
    measured_at: float | None = None,
    groups: dict[str, SlotGroup] | None = None,
) -> tuple[PoolSample, dict[str, Any]]:
    """A pool's sample, and the counters to keep for the next tick's rates.

    ``measured_at`` is when the counts were read (default ``now``); the rates are over the
    time since the previous sample's counts were read (its ``at`` if it predates the field).
    ``groups`` maps the node names of slot groups' workers to their group.
    """
    read_at = now if measured_at is None else measured_at
    running = sum(m.running for m in members) + silent_slots(members, groups or {})
    in_flight = running + sum(m.reserved for m in members)
    work = depth + in_flight
    completed = {
        m.hostname: (int(m.stats.get("pid", 0) or 0), m.accepted - m.running) for m in members
    }
    arrival = completion = 0.0
    before_at = float(previous.get("measured_at", previous["at"])) if previous else 0.0
    if previous and read_at > before_at:
        elapsed = read_at - before_at
        before = {h: tuple(v) for h, v in previous.get("completed", {}).items()}
        done = sum(
            max(0, count - before[h][1])
            for h, (pid, count) in completed.items()
            if h in before and before[h][0] == pid
        )
        completion = done / elapsed
        arrival = max(0.0, (work - previous["work"] + done) / elapsed)
    workers = worker_views(members, prefork_sizes, groups or {})
    sample = PoolSample(pool, now, depth, in_flight, arrival, completion, workers, read_at)
    return sample, {"at": now, "measured_at": read_at, "work": work, "completed": completed}


def measure(
    app: Celery,
    topology: Topology,
    timeout: float,
    now: float,
    prefork_sizes: dict[str, tuple[int, int]],
    counters: dict[str, Any],
    groups: dict[str, SlotGroup] | None = None,
) -> tuple[dict[str, PoolSample], dict[str, Any]]:
    """Samples of both pools and the counters for the next tick (``groups``: the live slot
    groups by id).

    Raises:
        Exception: whatever the broker client raises when it is unreachable (the tick
            catches it, logs and skips).
    """
    started = time.monotonic()
    reports = inspect_workers(app, timeout)
    with app.connection_for_read() as conn:
        # On ``now``'s clock, right after the last inspect reply and before the depths.
        measured_at = now + (time.monotonic() - started)
        depths = queue_depths(conn, {q for p in POOLS for q in pool_queues(topology, p)})
    samples: dict[str, PoolSample] = {}
    new_counters: dict[str, Any] = {}
    for pool in POOLS:
        work_queue = topology.queue_for_pool(pool)  # type: ignore[arg-type]
        members = [r for r in reports if work_queue in r.queues]
        depth = sum(depths[q] for q in pool_queues(topology, pool))
        samples[pool], new_counters[pool] = sample_pool(
            pool,
            now,
            depth,
            members,
            prefork_sizes,
            counters.get(pool),
            measured_at,
            node_groups(groups or {}, work_queue),
        )
    return samples, new_counters
