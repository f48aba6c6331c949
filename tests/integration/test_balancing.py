"""Balancing on real HTTP backends on 127.0.0.1, with fleet-wide health on real Redis.

Every backend is started by the test on an ephemeral loopback port; nothing else is called.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from typer.testing import CliRunner

from taskfleet.balancing import (
    Adaptive,
    Affinity,
    BalancedClient,
    Balancer,
    HealthChecker,
    LeastConnections,
    LeastResponseTime,
    NoBackendAvailable,
    RoundRobin,
    Strategy,
    Weighted,
)
from taskfleet.cli import cli
from taskfleet.config.balancing import BackendSpec, BalancingSettings, load_balancing_settings
from taskfleet.config.exposure import get_exposure_settings
from tests.support.backends import LOOPBACK, LoopbackBackend, loopback_backends, loopback_client
from tests.support.services import reachable
from tests.support.waiting import wait_for

LOCAL_REDIS = "redis://127.0.0.1:6379/0"
WEIGHTED_CALLS = 10_000
WEIGHT_TOLERANCE = 0.05
#: Threads making the weighted calls (the picks are serialised, the HTTP calls overlap).
CALLERS = 4
SLOWDOWN_S = 0.2
SHIFT_DEADLINE_S = 1.0
#: Calls in a row that must avoid the slowed backend for the load to count as shifted.
SHIFTED_STREAK = 30
CHECK_INTERVAL_S = 0.05
#: Calls held in flight on one backend: enough that the adaptive strategy's cost of it,
#: (held + 1) x 1 ms at least, beats a loopback call's latency even on a loaded machine.
HELD_CALLS = 50


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> str:
    """The configured Redis, else the local one on 6379, else the tests' embedded one."""
    url = os.environ.get("TASKFLEET_REDIS_URL")
    if url:
        return url
    if reachable(LOCAL_REDIS):
        return LOCAL_REDIS
    return str(request.getfixturevalue("services")["TASKFLEET_REDIS_URL"])


@pytest.fixture
def settings(redis_url: str) -> Iterator[BalancingSettings]:
    """Fast checks, and a namespace of this test's own (its keys are deleted afterwards)."""
    namespace = f"test-balancing:{uuid.uuid4().hex[:8]}"
    yield load_balancing_settings(
        namespace=namespace,
        health_interval=CHECK_INTERVAL_S,
        health_timeout=0.5,
        unhealthy_threshold=1,
        healthy_threshold=1,
        health_cache=0.0,
        consecutive_failures=3,
        ejection_base=30,
    )
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{namespace}:*"))
    if keys:
        client.delete(*keys)


def specs_of(backends: list[LoopbackBackend], weights: tuple[int, ...] = ()) -> list[BackendSpec]:
    return [
        BackendSpec(name=b.name, url=b.url, weight=weights[i] if weights else 1)
        for i, b in enumerate(backends)
    ]


def make(
    backends: list[LoopbackBackend],
    strategy: Strategy,
    settings: BalancingSettings,
    redis_url: str | None = None,
    weights: tuple[int, ...] = (),
) -> Balancer:
    r = redis.Redis.from_url(redis_url, socket_timeout=1.0) if redis_url else None
    return Balancer(specs_of(backends, weights), strategy, redis_client=r, settings=settings)


def calls(client: BalancedClient, n: int, key: str | None = None) -> Counter[str]:
    return Counter(
        client.request("GET", "/work", affinity_key=key).headers["X-Backend"] for _ in range(n)
    )


def test_weighted_distribution_matches_weights_over_10000_calls(
    settings: BalancingSettings,
) -> None:
    weights = (5, 3, 2)
    with loopback_backends("a", "b", "c") as backends, loopback_client() as http:
        client = BalancedClient(make(backends, Weighted(), settings, weights=weights), http)
        with ThreadPoolExecutor(CALLERS) as pool:
            served = sum(
                pool.map(lambda _: calls(client, WEIGHTED_CALLS // CALLERS), range(CALLERS)),
                Counter(),
            )
    for backend, weight in zip(backends, weights, strict=True):
        share = served[backend.name] / WEIGHTED_CALLS
        assert share == pytest.approx(weight / sum(weights), abs=WEIGHT_TOLERANCE)
        assert backend.served == served[backend.name]


def test_round_robin_and_affinity_on_real_backends(settings: BalancingSettings) -> None:
    with loopback_backends("a", "b", "c") as backends, loopback_client() as http:
        client = BalancedClient(make(backends, RoundRobin(), settings), http)
        assert calls(client, 30) == {"a": 10, "b": 10, "c": 10}
        sticky = BalancedClient(make(backends, Affinity(specs_of(backends)), settings), http)
        owners = {key: calls(sticky, 5, key) for key in ("k1", "k2", "k3", "k4")}
    assert all(len(served) == 1 for served in owners.values())


def test_least_connections_and_adaptive_avoid_a_backend_holding_calls(
    settings: BalancingSettings,
) -> None:
    with loopback_backends("a", "b", "c") as backends, loopback_client() as http:
        for strategy in (LeastConnections(), Adaptive(random.Random(1))):
            client = BalancedClient(make(backends, strategy, settings), http)
            busy = client.balancer.by_name["a"]
            for _ in range(HELD_CALLS):  # calls of other threads in flight on 'a'
                busy.started()
            served = calls(client, 40)
            assert served["a"] == 0, (strategy, served)
            assert min(served["b"], served["c"]) > 5, (strategy, served)
            for _ in range(HELD_CALLS):
                client.balancer.release(busy, 0.0005, ok=True)
            if isinstance(strategy, LeastConnections):
                # (Adaptive also weighs latency: a loaded machine's one slow call to 'a'
                # could keep it away for a while, so only in-flight counts are asserted.)
                assert calls(client, 40)["a"] > 5


def test_least_response_time_shifts_load_away_from_a_slowed_backend(
    settings: BalancingSettings,
) -> None:
    with loopback_backends("a", "b", "c") as backends, loopback_client() as http:
        client = BalancedClient(make(backends, LeastResponseTime(), settings), http)
        favourite = calls(client, 20).most_common(1)[0][0]
        slowed = next(b for b in backends if b.name == favourite)
        slowed.delay_s = SLOWDOWN_S
        began = time.monotonic()
        streak = 0
        while streak < SHIFTED_STREAK and time.monotonic() - began < SHIFT_DEADLINE_S:
            streak = 0 if calls(client, 1)[favourite] else streak + 1
        took = time.monotonic() - began
    assert streak >= SHIFTED_STREAK, f"load still on {favourite} after {took:.2f}s"
    assert took < SHIFT_DEADLINE_S


def test_killed_backend_gets_no_traffic_until_it_recovers(
    settings: BalancingSettings, redis_url: str
) -> None:
    with loopback_backends("a", "b", "c") as backends, loopback_client() as http:
        balancer = make(backends, RoundRobin(), settings, redis_url)
        client = BalancedClient(balancer, http)
        with HealthChecker(balancer, http):
            dead = backends[1]
            dead.kill()
            wait_for(lambda: "b" in balancer.board.down(), 5, "the health check to mark b down")
            before = dead.served
            served = calls(client, 60)
            assert served == {"a": 30, "c": 30}
            assert dead.served == before
            dead.revive()
            wait_for(lambda: "b" not in balancer.board.down(), 5, "b to be marked up again")
            assert calls(client, 30)["b"] == 10


def test_health_is_fleet_wide_through_redis(settings: BalancingSettings, redis_url: str) -> None:
    with loopback_backends("a", "b") as backends, loopback_client() as http:
        first = make(backends, RoundRobin(), settings, redis_url)
        second = make(backends, RoundRobin(), settings, redis_url)
        first.board.mark_down("a", "found dead by the first worker")
        assert second.board.mode == "redis"
        assert calls(BalancedClient(second, http), 10) == {"b": 10}
        first.board.mark_up("a")
        assert calls(BalancedClient(second, http), 10) == {"a": 5, "b": 5}


def test_redis_down_falls_back_to_local_health(settings: BalancingSettings) -> None:
    with loopback_backends("a", "b", "dead") as backends, loopback_client() as http:
        backends[2].kill()
        gone = LoopbackBackend("no-redis")
        gone.kill()  # a loopback port with nothing listening: Redis "down"
        balancer = make(backends, RoundRobin(), settings, f"redis://127.0.0.1:{gone.port}/0")
        with HealthChecker(balancer, http):
            wait_for(lambda: "dead" in balancer.board.down(), 5, "a local down mark")
        assert balancer.board.mode == "local"
        assert calls(BalancedClient(balancer, http), 10) == {"a": 5, "b": 5}


def test_safe_retry_once_on_another_backend_and_passive_ejection(
    settings: BalancingSettings, redis_url: str
) -> None:
    with loopback_backends("a", "b") as backends, loopback_client() as http:
        backends[0].status = 503
        client = BalancedClient(make(backends, RoundRobin(), settings, redis_url), http)
        assert client.request("GET", "/x").headers["X-Backend"] == "b"  # retried on b
        assert client.request("GET", "/x").headers["X-Backend"] == "b"
        first = client.request("POST", "/x")  # a POST that got an answer is not resent
        assert (first.status_code, first.headers["X-Backend"]) == (503, "a")
        assert "a" in client.balancer.board.down()  # third failure in a row: ejected
        assert client.balancer.board.read()["a"]["ejected"]["seconds_left"] > 20
        client.balancer.board.eject("b", "test")  # both out: nothing is sent
        with pytest.raises(NoBackendAvailable):
            client.get("/x")
        assert client.balancer.by_name["b"].counters["retries"] == 2


def test_post_is_retried_when_the_connection_was_refused(settings: BalancingSettings) -> None:
    with loopback_backends("a", "b") as backends, loopback_client() as http:
        backends[0].kill()
        client = BalancedClient(make(backends, RoundRobin(), settings), http)
        assert [client.post("/x").headers["X-Backend"] for _ in range(4)] == ["b"] * 4
        # a refused three calls in a row (the round robin's turns 0, 2, 4), then was ejected.
        assert client.balancer.by_name["a"].counters["connect_errors"] == 3
        assert client.balancer.by_name["b"].counters["retries"] == 3


def test_backends_status_cli_shows_health_and_counters(
    settings: BalancingSettings, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with loopback_backends("a", "b") as backends, loopback_client() as http:
        balancer = make(backends, RoundRobin(), settings, redis_url)
        calls(BalancedClient(balancer, http), 4)
        balancer.flush()
        balancer.board.mark_down("b", "probe failed")
        for name, value in {
            "TASKFLEET_BACKENDS": json.dumps([s.model_dump() for s in specs_of(backends)]),
            "TASKFLEET_BALANCING_NAMESPACE": settings.namespace,
            "TASKFLEET_REDIS_URL": redis_url,
            "TASKFLEET_BROKER_URL": redis_url,
            "TASKFLEET_DATABASE_URL": "postgresql://unused@127.0.0.1/unused",
            "TASKFLEET_EMBEDDED": "false",
            "TASKFLEET_OUTBOUND_ALLOW": LOOPBACK,  # the probe goes through the outbound policy
        }.items():
            monkeypatch.setenv(name, value)
        get_exposure_settings.cache_clear()
        try:
            result = CliRunner().invoke(cli, ["backends", "status", "--json", "--probe"])
        finally:
            get_exposure_settings.cache_clear()
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert (rows["a"]["health"], rows["a"]["probe"]) == ("up", "HTTP 200")
    assert rows["a"]["counters"] == {"requests": 2, "successes": 2}
    assert rows["b"]["health"].startswith("down (probe failed;")


def test_the_callers_transport_applies_to_calls_and_probes(settings: BalancingSettings) -> None:
    with loopback_backends("a") as backends, loopback_client() as http:
        # 192.0.2.0/24 is TEST-NET-1: the outbound policy refuses it before any connection.
        specs = [*specs_of(backends), BackendSpec(name="far", url="http://192.0.2.1:80")]
        balancer = Balancer(specs, RoundRobin(), settings=settings)
        client = BalancedClient(balancer, http)
        assert [client.post("/x").headers["X-Backend"] for _ in range(4)] == ["a"] * 4
        # Refused on its turns (calls 2, 3 and 4), each POST resent to 'a'; then ejected.
        assert balancer.by_name["far"].counters["connect_errors"] == 3
        assert "far" in balancer.board.down()
        assert HealthChecker(balancer, http).check() == {
            "a": "ok",
            "far": "health check: OutboundRefused",
        }


def test_backends_status_cli_refuses_an_undeclared_set(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TASKFLEET_BACKENDS", raising=False)
    result = CliRunner().invoke(cli, ["backends", "status"])
    assert (result.exit_code, "TASKFLEET_BACKENDS is unset" in result.output) == (2, True)
    monkeypatch.setenv("TASKFLEET_BACKENDS", '[{"name": "a", "url": "http://127.0.0.1:9"}]')
    for name in ("TASKFLEET_REDIS_URL", "TASKFLEET_BROKER_URL"):
        monkeypatch.setenv(name, redis_url)
    monkeypatch.setenv("TASKFLEET_DATABASE_URL", "postgresql://unused@127.0.0.1/unused")
    monkeypatch.setenv("TASKFLEET_EMBEDDED", "false")
    result = CliRunner().invoke(cli, ["backends", "status", "pricing"])
    assert result.exit_code == 2
    assert "no backend set 'pricing'; declared: default" in result.output
