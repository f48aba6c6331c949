"""Capacity planning on a known synthetic load (rates injected, no Redis)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from taskfleet.observability.capacity import PoolLoad, loads_from_history, plan


def entry(
    at: float,
    arrival: float,
    completion: float,
    in_flight: int,
    depth: int,
    measured_at: float | None = None,
) -> dict[str, Any]:
    """A decision-log entry of the autoscaler, as ``run_tick`` writes it, for the cpu pool
    (``measured_at`` left out: an entry of a version before it)."""
    inputs = {"pool": "cpu", "at": at, "depth": depth, "in_flight": in_flight,
              "arrival_rate": arrival, "completion_rate": completion,
              "workers": {"w1@h": 2, "w2@h": 2}}  # fmt: skip
    if measured_at is not None:
        inputs["measured_at"] = measured_at
    return {"at": at, "status": "decided", "pools": {"cpu": {"inputs": inputs}}}


def test_a_known_load_gives_the_mmc_figures_and_sizes() -> None:
    """λ 20/s, S 0.1 s on 4 processes (2 workers): utilisation 50%, wait 0.0087 s; of 100
    jobs waiting or in flight, the 96 beyond one per process drain at 40 - 20 = 20/s (4.8 s)
    and the last 4 take one service time (0.1 s); a 0.01 s wait needs 4 processes (2
    workers), a 0.05 s wait 3 (2 workers: whole workers of 2)."""
    load = PoolLoad("cpu", 20.0, 0.1, processes=4, workers=2, backlog=100, samples=1)
    row = plan(load, target_wait_s=0.01)
    assert row.utilisation == pytest.approx(0.5)
    assert row.expected_wait_s == pytest.approx(0.1739 * 0.1 / 2, rel=1e-3)
    assert row.drain_time_s == pytest.approx(4.9)
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


def test_window_rates_are_totals_over_its_intervals_not_means_of_ticks() -> None:
    """A drain at 20 jobs/s on 4 busy processes, nothing arriving, ticks 1 s apart whose
    counts were read 1.0, 0.5 and 0.5 s after them: 12 jobs done in a 0.5 s interval (24/s,
    a wave of 4 counted early) and 18 in the next 1.0 s (18/s) are 30 in 1.5 s, 20/s (the
    ticks' mean says 21/s, their tick times 15/s); S = 4 / 20 = 0.2 s. The work fell by 8
    then 22 (a job seen in neither list at the middle read): each tick logged arrivals (8/s,
    then -4/s clipped to 0), but over the window it fell by exactly the 30 done: 0/s. The
    backlog is everything not completed at the newest decision (36 waiting + 5 in flight),
    counted at its ``measured_at``; it drains in 41·S/4."""
    entries = [
        entry(101.0, arrival=0.0, completion=18.0, in_flight=5, depth=36, measured_at=101.5),
        entry(100.0, arrival=8.0, completion=24.0, in_flight=5, depth=58, measured_at=100.5),
        entry(99.0, arrival=0.0, completion=20.0, in_flight=5, depth=66, measured_at=100.0),
    ]
    load = loads_from_history(entries, window_s=60.0)["cpu"]
    assert load.service_time_s == pytest.approx(0.2)
    assert load.arrival_rate == pytest.approx(0.0)
    assert (load.backlog, load.measured_at, load.samples) == (41, 101.5, 2)
    assert plan(load, 1.0).drain_time_s == pytest.approx(41 * 0.2 / 4)


def test_busy_processes_are_averaged_over_time_and_capped_at_the_pool() -> None:
    """Intervals of 4 s and 1 s; busy 4 (6 in flight, capped at 4 processes), 4, then 2:
    over time (4·4 + 3·1) / 5 = 3.8 processes busy; 38 completed in 5 s (7.6/s), so S =
    3.8 / 7.6 = 0.5 s. Arrivals = completed + the work's growth: 38 + (2 - 46) < 0, so 0."""
    entries = [
        entry(10.0, arrival=0.0, completion=2.0, in_flight=2, depth=0),
        entry(9.0, arrival=0.0, completion=9.0, in_flight=4, depth=0),
        entry(5.0, arrival=0.0, completion=0.0, in_flight=6, depth=40),
    ]
    load = loads_from_history(entries, window_s=60.0)["cpu"]
    assert load.service_time_s == pytest.approx(3.8 / 7.6)
    assert load.arrival_rate == 0.0
    assert load.measured_at == 10.0  # an entry without measured_at: its tick time


def test_the_window_takes_the_intervals_that_start_in_it() -> None:
    """Window 60 s: the interval from the decision at 10 to the one at 95 starts outside it
    and is left out (its rates are a burst of long ago), the one from 95 to 100 is taken;
    with a window shorter than every interval, the newest one alone. Skipped ticks carry
    no measurement."""
    entries = [
        entry(100.0, arrival=2.0, completion=2.0, in_flight=1, depth=0),
        {"at": 99.0, "status": "skipped", "reason": "previous tick still running"},
        entry(95.0, arrival=500.0, completion=1.0, in_flight=1, depth=0),
        entry(10.0, arrival=0.0, completion=0.0, in_flight=4, depth=0),
    ]
    load = loads_from_history(entries, window_s=60.0)["cpu"]
    assert (load.arrival_rate, load.service_time_s, load.samples) == (2.0, 0.5, 1)
    assert (load.processes, load.workers, load.backlog) == (4, 2, 1)
    assert loads_from_history(entries, window_s=1.0)["cpu"].arrival_rate == 2.0
    assert loads_from_history([], 60.0) == {}


def test_a_single_decision_uses_its_own_rates() -> None:
    """With nothing before it, a decision's own rates: S = 3 busy / 20 per s."""
    load = loads_from_history([entry(1.0, 10.0, 20.0, 3, 7)], 60.0)["cpu"]
    assert (load.arrival_rate, load.samples, load.backlog) == (10.0, 1, 10)
    assert load.service_time_s == pytest.approx(0.15)


def test_a_pool_that_completed_nothing_has_no_service_time_and_no_size() -> None:
    """With no completion measured, S is unknown (0): nothing is sized."""
    load = loads_from_history([entry(1.0, 0.0, 0.0, 0, 0)], 60.0)["cpu"]
    row = plan(load, 1.0)
    assert load.service_time_s == 0.0
    assert row.processes_needed == 0
