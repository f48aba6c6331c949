"""The admission lease: what it saves (Redis round trips, counted by the server) and what it
must keep (fleet-wide failure counting, half-open trials through Redis, storage fallback).

Each test runs its own redis-server, so INFO commandstats counts only this test's calls.
"""

from __future__ import annotations

import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from taskfleet.resilience.breaker import BreakerOpen, CircuitBreaker
from taskfleet.resilience.runtime import EventFeed
from taskfleet.resilience.storage import LUA_PATH, BreakerConfig, RedisStorage
from tests.support.services import reachable
from tests.support.waiting import wait_for

CONFIG = BreakerConfig(fail_max=3, window=10, min_calls=100, reset_timeout=5, half_open_calls=2)
#: The lease's length; its clock stands still (``still``), so however long a test takes,
#: only failures, fleet events and lost subscriptions may end it.
LONG_LEASE_S = 60.0
CALLS = 300
#: Generous bound for a pub/sub message or a dropped connection to reach the feed.
EVENT_DEADLINE_S = 5.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Server:
    """A redis-server of our own (stop and restart it, count its commands)."""

    def __init__(self, data: Path) -> None:
        from taskfleet.devstack.redis_server import redis_executable

        self.exe = str(redis_executable())
        self.data = data
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--save", "", "--appendonly", "no", "--dir", "."],
            cwd=self.data,
            stdout=subprocess.DEVNULL,
        )
        wait_for(lambda: reachable(self.url), 10, "private redis to listen")
        # Cached up front, so each breaker call is one EVALSHA (no NOSCRIPT retry as EVAL).
        redis.Redis.from_url(self.url).script_load(LUA_PATH.read_text())

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def script_calls(self) -> int:
        """Breaker script calls so far (round trips to the breaker state)."""
        stats = redis.Redis.from_url(self.url).info("commandstats")
        return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = Server(tmp_path)
    running.start()
    yield running
    running.stop()


@pytest.fixture
def new_breaker(server: Server) -> Iterator[Callable[..., CircuitBreaker]]:
    """Breakers named alike, each with its own storage client and event feed (a "process")."""
    feeds: list[EventFeed] = []
    name = f"lease-{uuid.uuid4().hex[:8]}"

    def new(clock: Clock | None = None, **kw: object) -> CircuitBreaker:
        storage = RedisStorage(redis.Redis.from_url(server.url, socket_timeout=1.0))
        feed = EventFeed(storage.client)
        feeds.append(feed)
        wait_for(lambda: feed.epoch(name) is not None, 10, "the event feed to subscribe")
        still = Clock()  # the lease's clock: a lease taken never runs out on its own
        options: dict[str, object] = {"lease_s": LONG_LEASE_S, "feed": feed, "monotonic": still}
        options |= kw
        return CircuitBreaker(name, storage, CONFIG, clock=clock or Clock(), **options)  # type: ignore[arg-type]

    yield new
    for feed in feeds:
        feed.stop()


def succeed(breaker: CircuitBreaker, calls: int) -> None:
    for _ in range(calls):
        admission = breaker.admit()
        assert admission.allowed
        breaker.record(admission, None)


def fail(breaker: CircuitBreaker) -> None:
    admission = breaker.admit()
    assert admission.allowed
    breaker.record(admission, ConnectionError())


def test_lease_serves_closed_admissions_without_round_trips(
    server: Server, new_breaker: Callable[..., CircuitBreaker]
) -> None:
    breaker = new_breaker()
    before = server.script_calls()
    succeed(breaker, CALLS)
    assert server.script_calls() - before == 1  # the admission that took the lease
    assert breaker.counters["leased"] == CALLS - 1
    # The lease's admissions and successes reach Redis with the next call.
    breaker.drop_lease()
    succeed(breaker, 1)
    assert server.script_calls() - before == 2
    snapshot = breaker.snapshot()
    assert (snapshot["allowed"], snapshot["successes"]) == (CALLS + 1, CALLS)


def test_lease_zero_asks_redis_for_every_call(
    server: Server, new_breaker: Callable[..., CircuitBreaker]
) -> None:
    breaker = new_breaker(lease_s=0.0)
    before = server.script_calls()
    succeed(breaker, CALLS)
    assert server.script_calls() - before == CALLS
    assert breaker.counters["leased"] == 0


def test_failure_ends_the_lease_and_half_open_trials_go_to_redis(
    server: Server, new_breaker: Callable[..., CircuitBreaker]
) -> None:
    clock = Clock()
    breaker = new_breaker(clock)
    succeed(breaker, 10)
    before = server.script_calls()
    fail(breaker)
    assert server.script_calls() - before == 1  # admitted from the lease, failure recorded
    for _ in range(CONFIG.fail_max - 1):
        before = server.script_calls()
        fail(breaker)
        assert server.script_calls() - before == 2  # no lease while failures are counted
    with pytest.raises(BreakerOpen):
        breaker.call(lambda: "never")
    clock.now += CONFIG.reset_timeout
    before = server.script_calls()
    trials = [breaker.admit() for _ in range(CONFIG.half_open_calls + 1)]
    assert [t.allowed for t in trials] == [True, True, False]
    assert server.script_calls() - before == CONFIG.half_open_calls + 1
    for trial in trials[:-1]:
        breaker.record(trial, None)
    assert breaker.snapshot()["state"] == "closed"
    before = server.script_calls()
    succeed(breaker, 50)  # closed again: a new lease
    assert server.script_calls() - before == 1


def test_failing_elsewhere_ends_the_lease_so_successes_here_still_reset_the_count(
    new_breaker: Callable[..., CircuitBreaker],
) -> None:
    a, b = new_breaker(), new_breaker()
    succeed(b, 5)
    assert b.holds_lease()
    for _ in range(CONFIG.fail_max - 1):
        fail(a)
    # "Started failing" reached b over pub/sub, long before its lease would expire.
    wait_for(lambda: not b.holds_lease(), EVENT_DEADLINE_S, "b to drop its lease")
    succeed(b, 1)  # recorded at once: resets the fleet's consecutive count
    for _ in range(CONFIG.fail_max - 1):
        fail(a)
    assert a.snapshot()["state"] == "closed"
    fail(a)
    assert a.snapshot()["state"] == "open"
    assert not b.admit().allowed


@pytest.mark.timeout(60)
def test_redis_down_follows_the_configured_fallback_despite_a_lease(
    server: Server, new_breaker: Callable[..., CircuitBreaker]
) -> None:
    deferring = new_breaker(storage_fallback="open")
    letting = new_breaker(storage_fallback="closed")
    succeed(deferring, 3)
    succeed(letting, 3)
    assert deferring.holds_lease()
    assert letting.holds_lease()
    server.stop()
    # The feeds lose their connection: the leases end (not after LONG_LEASE_S).
    wait_for(
        lambda: not (deferring.holds_lease() or letting.holds_lease()),
        EVENT_DEADLINE_S,
        "the leases to end",
    )
    with pytest.raises(BreakerOpen):
        deferring.call(lambda: "never")
    assert letting.call(lambda: "through") == "through"
    assert deferring.counters["storage_errors"] >= 1
    assert letting.counters["storage_errors"] >= 1
    assert not letting.holds_lease()  # no lease is taken from a fallback answer
    server.start()
    # Subscribed again: the next admission asks Redis and takes a lease again.
    wait_for(
        lambda: deferring.admit().allowed and deferring.holds_lease(),
        20,
        "a lease after Redis came back",
    )
