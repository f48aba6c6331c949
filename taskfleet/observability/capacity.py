"""Capacity planning per pool from measured rates: utilisation, wait, drain time, sizing.

The rates come from the autoscaler's decision log in Redis (``taskfleet:autoscale:log``):
every tick measures each pool fleet-wide by conservation (arrivals, completions, jobs
waiting and in flight, the processes of each worker; see ``taskfleet.scheduler.measure``),
so any host reads the same figures, with no worker hook and no per-host metric file. The
rates are averaged over the decisions of the last ``window_s``; the mean service time is
Little's law on the service stage, ``S = busy processes / completion rate``, where busy is
the jobs in flight capped at the pool's processes (a job a worker reserved but has not
started is not being served); unknown while a pool completes nothing. The maths and its assumptions are :mod:`~taskfleet.observability.queueing`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from statistics import fmean
from typing import TYPE_CHECKING, Any, Final

import redis
from prometheus_client.core import GaugeMetricFamily, Metric

from taskfleet.config.observability import get_observability_settings
from taskfleet.observability.queueing import drain_time_s, mmc, servers_for_wait
from taskfleet.scheduler.store import LOG_KEY

if TYPE_CHECKING:
    from taskfleet.observability.fleet import FleetSources

#: Decisions read from the log at most (newest first).
HISTORY_LIMIT: Final = 200


@dataclass(frozen=True)
class PoolLoad:
    """A pool's measured load: mean rates over the window, sizes and backlog now."""

    pool: str
    arrival_rate: float
    service_time_s: float
    processes: int
    workers: int
    backlog: int
    samples: int


@dataclass(frozen=True)
class PoolCapacity:
    """A pool's capacity figures (``inf`` waits and drain times when overloaded)."""

    load: PoolLoad
    target_wait_s: float
    utilisation: float
    wait_probability: float
    expected_wait_s: float
    drain_time_s: float
    processes_needed: int
    workers_needed: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (``inf`` as ``null``)."""
        data = asdict(self)
        return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in data.items()}


def loads_from_history(entries: list[dict[str, Any]], window_s: float) -> dict[str, PoolLoad]:
    """Each pool's load from decision-log entries (newest first) of the last ``window_s``."""
    decided = [e for e in entries if e.get("status") == "decided" and e.get("pools")]
    if not decided:
        return {}
    recent = [e for e in decided if e["at"] >= decided[0]["at"] - window_s]
    loads: dict[str, PoolLoad] = {}
    for pool, newest in decided[0]["pools"].items():
        inputs = [e["pools"][pool]["inputs"] for e in recent if pool in e["pools"]]
        completion = fmean(float(i["completion_rate"]) for i in inputs)
        busy = fmean(min(float(i["in_flight"]), sum(i.get("workers", {}).values())) for i in inputs)
        sizes: dict[str, int] = newest["inputs"].get("workers", {})
        loads[pool] = PoolLoad(
            pool=pool,
            arrival_rate=fmean(float(i["arrival_rate"]) for i in inputs),
            service_time_s=busy / completion if completion > 0 else 0.0,
            processes=sum(sizes.values()),
            workers=len(sizes),
            backlog=int(newest["inputs"]["depth"]),
            samples=len(inputs),
        )
    return loads


def plan(load: PoolLoad, target_wait_s: float) -> PoolCapacity:
    """The M/M/c figures of ``load`` on its current processes, and the size for the target."""
    known = load.service_time_s > 0
    servers = max(1, load.processes)
    figures = mmc(load.arrival_rate, load.service_time_s, servers)
    needed = servers_for_wait(load.arrival_rate, load.service_time_s, target_wait_s) if known else 0
    per_worker = load.processes / load.workers if load.workers else 0.0
    idle = math.inf if figures.offered_load > 0 else 0.0  # no process at all
    return PoolCapacity(
        load=load,
        target_wait_s=target_wait_s,
        utilisation=figures.utilisation if load.processes else idle,
        wait_probability=figures.wait_probability,
        expected_wait_s=figures.mean_wait_s,
        drain_time_s=drain_time_s(load.backlog, load.arrival_rate, load.service_time_s, servers),
        processes_needed=needed,
        workers_needed=math.ceil(needed / per_worker) if per_worker else needed,
    )


def capacity_report(
    client: redis.Redis, target_wait_s: float, window_s: float, log_key: str = LOG_KEY
) -> list[PoolCapacity]:
    """The capacity figures of every pool the autoscaler measured (the Python API)."""
    entries = [json.loads(raw) for raw in client.lrange(log_key, 0, HISTORY_LIMIT - 1)]
    loads = loads_from_history(entries, window_s)
    return [plan(loads[pool], target_wait_s) for pool in sorted(loads)]


def capacity_gauges(src: FleetSources) -> Iterator[Metric]:
    """Per pool: utilisation, expected wait, drain time, processes and workers needed."""
    obs = get_observability_settings()
    report = capacity_report(src.results, obs.capacity_target_wait_s, obs.capacity_window_s)
    gauges = {
        "utilisation": ("taskfleet_capacity_utilisation", "Offered load / processes"),
        "expected_wait_s": ("taskfleet_capacity_expected_wait_seconds", "M/M/c mean wait"),
        "drain_time_s": ("taskfleet_capacity_drain_seconds", "Time to work off the queue"),
        "processes_needed": ("taskfleet_capacity_processes_needed", "For the target wait"),
        "workers_needed": ("taskfleet_capacity_workers_needed", "For the target wait"),
    }
    for field_name, (name, doc) in gauges.items():
        family = GaugeMetricFamily(name, doc, labels=["pool"])
        for pool in report:
            family.add_metric([pool.load.pool], float(getattr(pool, field_name)))
        yield family
