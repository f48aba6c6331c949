"""Capacity per job kind: each kind's share of its pool's arrivals and of its busy processes.

A pool's rates are measured fleet-wide (:mod:`~taskfleet.observability.capacity`); how they
split between kinds comes from the job metrics of the worker metric files
(``taskfleet_job_run_seconds`` by kind: how many jobs of each kind ran, and for how long in
total). A kind's share of its pool's arrivals is its share of the jobs that ran, over the
files' lifetime (not the capacity window: counters are read once, not as rates); its mean
service time is its run time's sum / count. Only kinds of the job table are placed in a pool.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from taskfleet.observability.capacity import PoolLoad
from taskfleet.observability.jobs import MULTIPROC_ENV
from taskfleet.observability.server import WorkerFiles
from taskfleet.tasks.table import JOB_POOLS

RUN_COUNT: Final = "taskfleet_job_run_seconds_count"
RUN_SUM: Final = "taskfleet_job_run_seconds_sum"
#: One metric sample: name, labels, value.
Sample = tuple[str, Mapping[str, str], float]


@dataclass(frozen=True)
class KindLoad:
    """One kind's part of its pool's load."""

    pool: str
    kind: str
    share: float
    arrival_rate: float
    service_time_s: float
    offered_load: float


def kind_loads(samples: Iterable[Sample], pools: dict[str, PoolLoad]) -> list[KindLoad]:
    """Each kind's share, arrival rate, mean service time and offered load (Erlangs)."""
    counts: dict[str, float] = {}
    sums: dict[str, float] = {}
    for name, labels, value in samples:
        kind = labels.get("kind", "")
        if name == RUN_COUNT:
            counts[kind] = counts.get(kind, 0.0) + value
        elif name == RUN_SUM:
            sums[kind] = sums.get(kind, 0.0) + value
    totals: dict[str, float] = {}
    for kind, count in counts.items():
        pool = JOB_POOLS.get(kind)
        if pool is not None and count > 0:
            totals[pool] = totals.get(pool, 0.0) + count
    found: list[KindLoad] = []
    for kind in sorted(counts):
        pool = JOB_POOLS.get(kind)
        if pool is None or pool not in pools or counts[kind] <= 0:
            continue
        share = counts[kind] / totals[pool]
        arrival = pools[pool].arrival_rate * share
        service = sums.get(kind, 0.0) / counts[kind]
        found.append(KindLoad(pool, kind, share, arrival, service, arrival * service))
    return found


def read_kind_loads(folder: str | None, pools: dict[str, PoolLoad]) -> list[KindLoad]:
    """:func:`kind_loads` from the worker metric files under ``folder`` (default
    ``PROMETHEUS_MULTIPROC_DIR``); none without a folder."""
    chosen = folder or os.environ.get(MULTIPROC_ENV)
    if not chosen:
        return []
    families = WorkerFiles(chosen).collect()
    return kind_loads(((s.name, s.labels, s.value) for f in families for s in f.samples), pools)
