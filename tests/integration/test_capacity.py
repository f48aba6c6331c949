"""Capacity planning reads real measurements: a real I/O worker running jobs of known length.

The autoscaler's ``measure`` (what each tick records) samples the pool twice while jobs of
200 ms run on 4 greenlets; the entry is written in the decision log's form to a key of the
test's own (the fleet-wide log is the autoscaler tests' to clear), and the report read from
it must find the worker's 4 processes and a service time near 200 ms.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from taskfleet.client import Client
from taskfleet.config import load_settings
from taskfleet.observability.capacity import capacity_report
from taskfleet.observability.capacity_kinds import RUN_COUNT, read_kind_loads
from taskfleet.observability.jobs import MULTIPROC_ENV
from taskfleet.observability.server import WorkerFiles
from taskfleet.routing.topology import Topology
from taskfleet.scheduler.measure import measure
from taskfleet.scheduler.model import PoolSample
from tests.support.waiting import wait_for
from tests.support.workers import Fleet, running_fleet

#: 80 jobs of 200 ms keep 4 greenlets busy for 4 s: room for two measurements.
GREENLETS, JOBS, JOB_MS = 4, 80, 200
INSPECT_TIMEOUT_S = 0.5
MEASURE_DEADLINE_S = 15.0
DRAIN_DEADLINE_S = 30.0
#: Little's law over a second of a real worker: generous bounds, the point is the source.
SERVICE_BOUNDS_S = (0.1, 0.6)


@pytest.fixture
def io_fleet(redis_env: dict[str, str], tmp_path: Path) -> Iterator[Fleet]:
    """One I/O worker of 4 greenlets on queues of its own."""
    suffix = uuid.uuid4().hex[:6]
    env = {**redis_env, "TASKFLEET_CPU_QUEUE": f"cpu-cap-{suffix}",
           "TASKFLEET_IO_QUEUE": f"io-cap-{suffix}",
           MULTIPROC_ENV: str(tmp_path / "metrics")}  # fmt: skip
    with running_fleet(env, tmp_path, io=GREENLETS, pools=("io",)) as fleet:
        yield fleet


Measured = tuple[dict[str, PoolSample], dict[str, Any]]


def runs(folder: str) -> float:
    """Jobs the worker metric files under ``folder`` say ran."""
    families = WorkerFiles(folder).collect()
    return sum(s.value for f in families for s in f.samples if s.name == RUN_COUNT)


def busy(measured: Measured) -> Measured | None:
    """``measured`` if its I/O pool's one worker has every greenlet busy, else None."""
    io = measured[0]["io"]
    return measured if io.in_flight >= GREENLETS and len(io.workers) == 1 else None


def test_the_report_reads_a_real_pools_processes_and_service_time(
    io_fleet: Fleet, redis_client: redis.Redis
) -> None:
    """Two real measurements while 80 jobs of 200 ms run: 4 processes on 1 worker and a
    service time in the job's range; the worker's metric files put every job under
    ``io.wait``, with a mean run time of 200-400 ms."""
    app = io_fleet.app()
    topology = Topology.from_settings(load_settings(**io_fleet.settings_overrides))
    producer = Client(app)
    log_key = f"test:capacity:{uuid.uuid4().hex[:8]}"
    try:
        handles = producer.enqueue_many([("io.wait", {"ms": JOB_MS})] * JOBS)
        # Both measurements while every greenlet is busy (a worker an inspect missed has no
        # baseline, so the first must see it).
        baseline = wait_for(
            lambda: busy(measure(app, topology, INSPECT_TIMEOUT_S, time.time(), {}, {})),
            MEASURE_DEADLINE_S,
            "a measurement of the busy worker",
        )[1]
        sample = wait_for(
            lambda: busy(measure(app, topology, INSPECT_TIMEOUT_S, time.time(), {}, baseline)),
            MEASURE_DEADLINE_S,
            "a measurement with jobs completed since",
        )[0]["io"]
        assert sample.completion_rate > 0
        entry = {
            "at": sample.at,
            "status": "decided",
            "pools": {"io": {"inputs": sample.as_dict()}},
        }
        redis_client.lpush(log_key, json.dumps(entry))
        (row,) = capacity_report(redis_client, 1.0, 60.0, log_key=log_key)
        assert row.load.pool == "io"
        assert (row.load.processes, row.load.workers) == (GREENLETS, 1)
        low, high = SERVICE_BOUNDS_S
        assert low <= row.load.service_time_s <= high, row
        wait_for(lambda: all(h.ready() for h in handles), DRAIN_DEADLINE_S, "the jobs to finish")
        folder = io_fleet.env[MULTIPROC_ENV]
        wait_for(lambda: runs(folder) == JOBS, DRAIN_DEADLINE_S, "every job in the metric files")
        (kind,) = read_kind_loads(folder, {"io": row.load})
        assert (kind.kind, kind.share) == ("io.wait", 1.0)
        assert JOB_MS / 1000 <= kind.service_time_s <= 2 * JOB_MS / 1000
    finally:
        redis_client.delete(log_key)
        producer.close()
        app.close()


def test_taskfleet_capacity_prints_json_from_the_fleet_redis(redis_env: dict[str, str]) -> None:
    """``taskfleet capacity --json`` reads the fleet's Redis and prints a JSON list (one entry
    per pool the autoscaler measured; none if it never ticked on this Redis)."""
    from typer.testing import CliRunner

    from taskfleet.cli.app import cli

    result = CliRunner().invoke(cli, ["capacity", "--json", "--target-wait", "0.5"], env=redis_env)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert isinstance(rows, list)
    assert all(row["target_wait_s"] == 0.5 for row in rows)
