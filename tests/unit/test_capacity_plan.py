"""Capacity planning on a known synthetic load (rates injected, no Redis)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from taskfleet.observability.capacity import PoolLoad, loads_from_history, plan


def entry(
    at: float, arrival: float, completion: float, in_flight: int, depth: int
) -> dict[str, Any]:
    """A decision-log entry of the autoscaler, as ``run_tick`` writes it, for the cpu pool."""
    inputs = {"pool": "cpu", "at": at, "depth": depth, "in_flight": in_flight,
              "arrival_rate": arrival, "completion_rate": completion,
              "workers": {"w1@h": 2, "w2@h": 2}}  # fmt: skip
    return {"at": at, "status": "decided", "pools": {"cpu": {"inputs": inputs}}}


def test_a_known_load_gives_the_mmc_figures_and_sizes() -> None:
    """λ 20/s, S 0.1 s on 4 processes (2 workers): utilisation 50%, wait 0.0087 s; 100 jobs
    waiting drain at 40 - 20 = 20/s in 5 s; a 0.01 s wait needs 4 processes (2 workers), a
    0.05 s wait 3 (2 workers: whole workers of 2)."""
    load = PoolLoad("cpu", 20.0, 0.1, processes=4, workers=2, backlog=100, samples=1)
    row = plan(load, target_wait_s=0.01)
    assert row.utilisation == pytest.approx(0.5)
    assert row.expected_wait_s == pytest.approx(0.1739 * 0.1 / 2, rel=1e-3)
    assert row.drain_time_s == pytest.approx(5.0)
    assert (row.processes_needed, row.workers_needed) == (4, 2)
    assert (plan(load, 0.05).processes_needed, plan(load, 0.05).workers_needed) == (3, 2)


def test_an_overloaded_pool_never_drains_and_json_says_null() -> None:
    """λ 50/s on 4 processes of 0.1 s: utilisation 125%, no steady state; sized for 1 s."""
    row = plan(PoolLoad("cpu", 50.0, 0.1, 4, 2, 10, 1), target_wait_s=1.0)
    assert row.utilisation == pytest.approx(1.25)
    assert math.isinf(row.expected_wait_s)
    assert row.as_dict()["drain_time_s"] is None
    assert row.processes_needed == 6
    assert row.workers_needed == 3


def test_loads_average_the_window_and_use_littles_law_for_service_time() -> None:
    """Entries older than the window are left out; S = mean in flight / mean completions."""
    entries = [
        entry(100.0, arrival=22.0, completion=20.0, in_flight=3, depth=40),
        entry(95.0, arrival=18.0, completion=20.0, in_flight=1, depth=30),
        entry(10.0, arrival=500.0, completion=1.0, in_flight=4, depth=0),  # outside 60 s
        {"at": 99.0, "status": "skipped", "reason": "previous tick still running"},
    ]
    load = loads_from_history(entries, window_s=60.0)["cpu"]
    assert load.arrival_rate == pytest.approx(20.0)
    assert load.service_time_s == pytest.approx(2 / 20)
    assert (load.processes, load.workers, load.backlog, load.samples) == (4, 2, 40, 2)
    assert loads_from_history([], 60.0) == {}


def test_a_pool_that_completed_nothing_has_no_service_time_and_no_size() -> None:
    """With no completion measured, S is unknown (0): nothing is sized."""
    load = loads_from_history([entry(1.0, 0.0, 0.0, 0, 0)], 60.0)["cpu"]
    row = plan(load, 1.0)
    assert load.service_time_s == 0.0
    assert row.processes_needed == 0
