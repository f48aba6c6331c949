"""A pool's load split by kind from the run-time histograms (injected samples)."""

from __future__ import annotations

import pytest

from taskfleet.observability.capacity import PoolLoad
from taskfleet.observability.capacity_kinds import RUN_COUNT, RUN_SUM, kind_loads


def test_kinds_split_their_pools_arrivals_by_jobs_run() -> None:
    """cpu.noop ran 300 jobs (0.3 s in all), cpu.checksum 100 (20 s): of 20 arrivals/s, 15
    and 5; mean service 1 ms and 200 ms; offered load 0.015 and 1 process. A kind outside
    the job table, or of a pool not measured, is left out."""
    samples = [
        (RUN_COUNT, {"kind": "cpu.noop"}, 200.0),
        (RUN_COUNT, {"kind": "cpu.noop"}, 100.0),  # a second worker's file
        (RUN_SUM, {"kind": "cpu.noop"}, 0.3),
        (RUN_COUNT, {"kind": "cpu.checksum"}, 100.0),
        (RUN_SUM, {"kind": "cpu.checksum"}, 20.0),
        (RUN_COUNT, {"kind": "other"}, 50.0),
        (RUN_COUNT, {"kind": "io.noop"}, 10.0),
    ]
    pools = {"cpu": PoolLoad("cpu", 20.0, 0.05, 4, 2, 0, 1)}
    noop, checksum = sorted(kind_loads(samples, pools), key=lambda k: k.kind, reverse=True)
    assert (noop.kind, noop.share, noop.arrival_rate) == ("cpu.noop", 0.75, 15.0)
    assert noop.service_time_s == pytest.approx(0.001)
    assert (checksum.kind, checksum.arrival_rate) == ("cpu.checksum", 5.0)
    assert checksum.service_time_s == pytest.approx(0.2)
    assert checksum.offered_load == pytest.approx(1.0)
    assert len(kind_loads(samples, pools)) == 2
