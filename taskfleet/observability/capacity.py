"""Capacity planning per pool from measured rates: utilisation, wait, drain time, sizing.

The rates come from the autoscaler's decision log in Redis (``taskfleet:autoscale:log``):
every tick measures each pool fleet-wide by conservation (arrivals, completions, jobs
waiting and in flight, the processes of each worker; see ``taskfleet.scheduler.measure``),
so any host reads the same figures, with no worker hook and no per-host metric file.

Each decision carries the rates over the interval since the decision before it (measured
between the moments the two counted, ``measured_at``); the window's intervals are those
that start at most ``window_s`` before the newest decision (the newest interval alone if
none does). The window's figures are totals over those intervals, not means of per-tick
rates: completions = each interval's completion rate times its length, summed; arrivals =
completions + the growth of the work (jobs waiting or in flight) from the start of the
first interval to the end of the last; both divided by the summed length. A job is then
counted once whichever tick sees it complete, so what one tick miscounts (jobs finishing
in step while its counts are read a few ms apart) the next makes up, and only the window's
two ends are uncertain. A mean of per-tick rates weighs a short interval like a long one
and, with arrivals clipped at zero per tick, leans high.

The mean service time is Little's law on the service stage, ``S = mean busy processes /
completion rate``, the busy processes (the jobs in flight, capped at the pool's processes: a
job a worker reserved but has not started is not being served) averaged over time between
the two ends of each interval; unknown while a pool completes nothing. With a single
decision in the log and nothing before it, its own rates are used.

The backlog to drain is every job not yet completed when the newest decision counted them
(``measured_at``): waiting in the broker, and in flight (reserved by a worker, which
prefetches, or running), all of which the pool still has to work off. The maths and its
assumptions are :mod:`~taskfleet.observability.queueing`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from itertools import pairwise
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
    """A pool's measured load: rates over the window, sizes and backlog at its newest decision.

    ``backlog`` counts jobs waiting and in flight at ``measured_at`` (wall clock, when the
    newest decision read them); ``samples`` the intervals the rates are taken over.
    """

    pool: str
    arrival_rate: float
    service_time_s: float
    processes: int
    workers: int
    backlog: int
    samples: int
    measured_at: float = 0.0


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


def _measured_at(inputs: dict[str, Any]) -> float:
    """When a decision's counts were read (its tick time if it predates ``measured_at``)."""
    at = inputs.get("measured_at")
    return float(inputs["at"] if at is None else at)


def _busy(inputs: dict[str, Any]) -> float:
    """Processes serving a job at a decision: jobs in flight, at most the pool's processes."""
    return min(float(inputs["in_flight"]), float(sum(inputs.get("workers", {}).values())))


def _work(inputs: dict[str, Any]) -> float:
    """Jobs not completed at a decision: waiting, reserved or running."""
    return float(inputs["depth"]) + float(inputs["in_flight"])


def pool_load(pool: str, series: list[dict[str, Any]], window_s: float) -> PoolLoad:
    """A pool's load from its decisions' inputs (newest first): see the module docstring."""
    newest = series[0]
    since = float(newest["at"]) - window_s
    pairs = list(pairwise(series))  # (end, start) of each interval, newest first
    chosen = [(end, start) for end, start in pairs if float(start["at"]) >= since] or pairs[:1]
    length = completed = busy_time = grown = 0.0
    intervals = 0
    for end, start in chosen:
        elapsed = _measured_at(end) - _measured_at(start)
        if elapsed <= 0:
            continue
        done = float(end["completion_rate"]) * elapsed  # the rate measure took over it
        length += elapsed
        completed += done
        busy_time += (_busy(start) + _busy(end)) / 2 * elapsed
        grown += _work(end) - _work(start)
        intervals += 1
    if intervals:
        completion = completed / length
        arrival = max(0.0, grown + completed) / length
        busy = busy_time / length
    else:  # one decision and nothing before it: its own rates, over an unknown interval
        completion = float(newest["completion_rate"])
        arrival = float(newest["arrival_rate"])
        busy = _busy(newest)
    sizes: dict[str, int] = newest.get("workers", {})
    return PoolLoad(
        pool=pool,
        arrival_rate=arrival,
        service_time_s=busy / completion if completion > 0 else 0.0,
        processes=sum(sizes.values()),
        workers=len(sizes),
        backlog=int(_work(newest)),
        samples=intervals or 1,
        measured_at=_measured_at(newest),
    )


def loads_from_history(entries: list[dict[str, Any]], window_s: float) -> dict[str, PoolLoad]:
    """Each pool's load from decision-log entries (newest first) of the last ``window_s``."""
    decided = [e for e in entries if e.get("status") == "decided" and e.get("pools")]
    if not decided:
        return {}
    loads: dict[str, PoolLoad] = {}
    for pool in decided[0]["pools"]:
        series = [e["pools"][pool]["inputs"] for e in decided if pool in e["pools"]]
        loads[pool] = pool_load(pool, series, window_s)
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
