"""Balancing strategies, latency books and ejection growth, on a fake clock (no HTTP, no Redis)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from taskfleet.balancing import (
    Adaptive,
    Affinity,
    Balancer,
    LeastConnections,
    LeastResponseTime,
    NoBackendAvailable,
    RoundRobin,
    Weighted,
)
from taskfleet.balancing.stats import BackendStats
from taskfleet.balancing.strategies import Strategy
from taskfleet.config.balancing import BackendSpec, load_balancing_settings


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def specs(*weights: int) -> list[BackendSpec]:
    return [
        BackendSpec(name=f"b{i}", url=f"http://127.0.0.1:{9000 + i}", weight=w)
        for i, w in enumerate(weights)
    ]


def balancer(strategy: Strategy, *weights: int, clock: FakeClock | None = None) -> Balancer:
    settings = load_balancing_settings(consecutive_failures=3, ejection_base=10, ejection_max=25)
    return Balancer(specs(*weights), strategy, settings=settings, clock=clock or FakeClock())


def picks(b: Balancer, n: int, key: str | None = None) -> list[str]:
    out = []
    for _ in range(n):
        stats = b.acquire(key)
        b.release(stats, 0.001, ok=True)
        out.append(stats.name)
    return out


def test_round_robin_takes_each_live_backend_in_turn() -> None:
    b = balancer(RoundRobin(), 5, 1, 1)
    assert picks(b, 6) == ["b0", "b1", "b2", "b0", "b1", "b2"]


def test_weighted_is_smooth_and_exact() -> None:
    b = balancer(Weighted(), 5, 1, 1)
    assert picks(b, 7) == ["b0", "b0", "b1", "b0", "b2", "b0", "b0"]
    assert Counter(picks(b, 700)) == {"b0": 500, "b1": 100, "b2": 100}


def test_least_connections_avoids_the_busy_backend() -> None:
    b = balancer(LeastConnections(), 1, 1, 1)
    held = [b.acquire(), b.acquire()]  # two calls in flight, on two backends
    assert len({h.name for h in held}) == 2
    free = ({"b0", "b1", "b2"} - {h.name for h in held}).pop()
    assert b.acquire().name == free
    view = {row["name"]: row for row in b.snapshot()["backends"]}
    assert [view[n]["in_flight"] for n in ("b0", "b1", "b2")] == [1, 1, 1]
    assert all(row["live"] and row["requests"] == 1 for row in view.values())


def test_least_response_time_prefers_the_fastest_and_retries_a_slow_one_later() -> None:
    clock = FakeClock()
    b = balancer(LeastResponseTime(), 1, 1, 1, clock=clock)
    for name, latency in (("b0", 0.010), ("b1", 0.002), ("b2", 0.200)):
        b.by_name[name].started()
        b.release(b.by_name[name], latency, ok=True)
    assert set(picks(b, 20)) == {"b1"}
    # Idle for long, the slow backend's estimate decays below the busy ones'.
    b.by_name["b1"].latency_s = 0.002
    clock.now += 60
    b.by_name["b0"].last_sample_at = b.by_name["b1"].last_sample_at = clock.now
    assert picks(b, 1) == ["b2"]


def test_adaptive_picks_the_cheaper_of_two_random_backends() -> None:
    b = balancer(Adaptive(random.Random(7)), 1, 1, 1)
    slow = b.by_name["b2"]
    slow.started()
    b.release(slow, 0.5, ok=True)
    counts = Counter(picks(b, 300))
    # The costliest backend loses every draw (two distinct backends are drawn); the two
    # others share the traffic.
    assert counts["b2"] == 0
    assert counts["b0"] > 100
    assert counts["b1"] > 100


def test_affinity_is_sticky_and_moves_only_a_dead_backends_keys() -> None:
    backends = specs(1, 1, 1)
    b = balancer(Affinity(backends), 1, 1, 1)
    keys = [f"customer-{i}" for i in range(300)]
    before = {k: picks(b, 2, key=k) for k in keys}
    assert all(first == second for first, second in before.values())
    b.board.eject("b1", "test")
    after = {k: picks(b, 1, key=k)[0] for k in keys}
    moved = {k for k in keys if after[k] != before[k][0]}
    assert moved == {k for k in keys if before[k][0] == "b1"}
    assert all(after[k] != "b1" for k in keys)


def test_consecutive_failures_eject_for_a_growing_capped_time() -> None:
    clock = FakeClock()
    b = balancer(RoundRobin(), 1, 1, clock=clock)
    stats = b.by_name["b0"]
    seconds = []
    for _ in range(3):
        for _ in range(3):
            stats.started()
            b.release(stats, 0.001, ok=False, kind="http_5xx")
        assert [s.name for s in b.live()] == ["b1"]
        seconds.append(b.board.local_until("ejected", "b0") - clock.now)
        clock.now += 30
        assert "b0" in {s.name for s in b.live()}
    assert seconds == [10, 20, 25]
    assert stats.counters["http_5xx"] == 9


def test_no_live_backend_raises() -> None:
    b = balancer(RoundRobin(), 1)
    b.board.eject("b0", "test")
    with pytest.raises(NoBackendAvailable, match="b0"):
        b.acquire()


def test_latency_is_an_ewma() -> None:
    stats = BackendStats(specs(1)[0], FakeClock(), alpha=0.5)
    for latency in (0.1, 0.3):
        stats.started()
        stats.finished(latency, ok=True)
    assert stats.latency() == pytest.approx(0.2)
    assert stats.take_deltas() == {"requests": 2, "successes": 2}
    assert stats.take_deltas() == {}


def test_the_last_live_backend_is_not_ejected() -> None:
    b = balancer(RoundRobin(), 1, 1)
    b.board.mark_down("b1", "health check")
    for _ in range(6):
        stats = b.acquire()
        b.release(stats, 0.001, ok=False, kind="http_5xx")
    assert [s.name for s in b.live()] == ["b0"]
    assert b.by_name["b0"].counters["failures"] == 6
