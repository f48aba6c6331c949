"""M/M/c maths against closed forms and textbook Erlang C values."""

from __future__ import annotations

import math

import pytest

from taskfleet.observability.queueing import (
    drain_time_s,
    erlang_c,
    mmc,
    servers_for_wait,
)


def test_erlang_c_matches_known_values() -> None:
    """C(1, rho) = rho; C(2, a) = a² / (2 + a) (M/M/2); C(3, 2) = 4/9; overloaded waits surely."""
    for rho in (0.1, 0.5, 0.9):
        assert erlang_c(1, rho) == pytest.approx(rho)
    for load in (0.5, 1.0, 1.5):
        assert erlang_c(2, load) == pytest.approx(load**2 / (2 + load))
    assert erlang_c(3, 2.0) == pytest.approx(4 / 9)
    # Textbook call centre: 10 Erlangs on 11 agents waits with probability 0.6821.
    assert erlang_c(11, 10.0) == pytest.approx(0.6821, abs=1e-4)
    assert erlang_c(4, 4.0) == 1.0
    with pytest.raises(ValueError, match="servers"):
        erlang_c(0, 1.0)


def test_mmc_waits_as_mm1_and_is_infinite_when_overloaded() -> None:
    """M/M/1: Wq = rho·S / (1 - rho); rho ≥ 1 has no steady state."""
    figures = mmc(arrival_rate=8.0, service_time_s=0.1, servers=1)
    assert figures.utilisation == pytest.approx(0.8)
    assert figures.mean_wait_s == pytest.approx(0.8 * 0.1 / 0.2)
    assert mmc(10.0, 0.1, 1).mean_wait_s == math.inf
    assert mmc(0.0, 0.1, 3).mean_wait_s == 0.0


def test_servers_for_wait_is_the_smallest_count_meeting_the_target() -> None:
    """Offered load 2 (λ 20/s, S 0.1 s): 3 servers wait 0.0444 s, 4 servers 0.0087 s."""
    assert mmc(20.0, 0.1, 3).mean_wait_s == pytest.approx(4 / 9 * 0.1 / 1)
    assert servers_for_wait(20.0, 0.1, target_wait_s=0.05) == 3
    assert servers_for_wait(20.0, 0.1, target_wait_s=0.01) == 4
    assert servers_for_wait(0.0, 0.1, target_wait_s=0.0) == 1


def test_drain_time_uses_the_spare_service_rate() -> None:
    """4 servers of S 0.5 s serve 8/s; with 3/s arriving, the 96 of 100 jobs beyond one per
    server drain in 19.2 s, the last 4 in 0.5 s; with none arriving 100 jobs take 100·S/4;
    jobs fewer than the servers one service time, however many servers."""
    assert drain_time_s(100, 3.0, 0.5, 4) == pytest.approx(19.7)
    assert drain_time_s(100, 0.0, 0.5, 4) == pytest.approx(12.5)
    assert drain_time_s(3, 0.0, 10.0, 100) == pytest.approx(10.0)
    assert drain_time_s(100, 8.0, 0.5, 4) == math.inf
    assert drain_time_s(0, 8.0, 0.5, 4) == 0.0
