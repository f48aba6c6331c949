"""Circuit breaker semantics on both storages (memory, real Redis), with a fake clock.

On Redis they run twice: asking Redis for every call, and with a long admission lease (the
semantics must not change; ``test_breaker_lease.py`` covers what the lease saves).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from taskfleet.resilience.breaker import BreakerOpen, CircuitBreaker
from taskfleet.resilience.memory_storage import MemoryStorage
from taskfleet.resilience.runtime import EventFeed
from taskfleet.resilience.storage import (
    BreakerConfig,
    BreakerStorage,
    RedisStorage,
    storage_from_url,
)
from tests.support.services import reachable
from tests.support.waiting import wait_for

CONFIG = BreakerConfig(
    fail_max=3, failure_rate=0.5, window=10, min_calls=6, reset_timeout=5, half_open_calls=2
)
#: The lease's length; its clock stands still, so only failures and fleet events end it.
LONG_LEASE_S = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class LeasedStorage(RedisStorage):
    """Redis storage whose breakers (``make``) take admission leases from ``feed``."""

    feed: EventFeed


@pytest.fixture(params=["memory", "redis", "redis-lease"])
def storage(request: pytest.FixtureRequest) -> Iterator[BreakerStorage]:
    if request.param == "memory":
        yield MemoryStorage()
        return
    url = request.getfixturevalue("services")["TASKFLEET_REDIS_URL"]
    if request.param == "redis":
        yield storage_from_url(url)
        return
    leased = LeasedStorage(redis.Redis.from_url(url))
    leased.feed = EventFeed(leased.client)
    wait_for(lambda: leased.feed.epoch("") is not None, 10, "the event feed to subscribe")
    yield leased
    leased.feed.stop()


def make(storage: BreakerStorage, clock: Clock, **kw: object) -> CircuitBreaker:
    events: list[tuple[str, str]] = []
    if isinstance(storage, LeasedStorage):
        kw = {"lease_s": LONG_LEASE_S, "feed": storage.feed, "monotonic": Clock()} | kw
    breaker = CircuitBreaker(
        f"b-{uuid.uuid4().hex[:8]}",
        storage,
        CONFIG,
        clock=clock,
        listeners=[lambda _n, old, new: events.append((old, new))],
        **kw,  # type: ignore[arg-type]
    )
    breaker.events = events  # type: ignore[attr-defined]
    return breaker


def fail(breaker: CircuitBreaker) -> None:
    admission = breaker.admit()
    assert admission.allowed
    breaker.record(admission, ConnectionError())


def test_consecutive_failures_open_then_half_open_then_close(storage: BreakerStorage) -> None:
    clock = Clock()
    breaker = make(storage, clock)
    for _ in range(3):
        fail(breaker)
    refused = breaker.admit()
    assert not refused.allowed
    assert refused.retry_at == clock.now + 5
    clock.now += 5
    trials = [breaker.admit() for _ in range(3)]
    assert [t.allowed for t in trials] == [True, True, False]  # two trials at once
    assert all(t.trial for t in trials[:2])
    for t in trials[:2]:
        breaker.record(t, None)
    assert breaker.snapshot()["state"] == "closed"
    assert breaker.events == [  # type: ignore[attr-defined]
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    assert breaker.snapshot()["opened"] == 1


def test_success_resets_consecutive_count(storage: BreakerStorage) -> None:
    breaker = make(storage, Clock())
    for _ in range(2):
        fail(breaker)
    ok = breaker.admit()
    breaker.record(ok, None)
    for _ in range(2):
        fail(breaker)
    assert breaker.snapshot()["state"] == "closed"


def test_failure_rate_over_window_with_min_calls(storage: BreakerStorage) -> None:
    clock = Clock()
    breaker = make(storage, clock)
    pattern = [None, ConnectionError(), None, ConnectionError(), None]
    for error in pattern:  # 2 of 5: under min_calls, and never 3 in a row
        breaker.record(breaker.admit(), error)
    assert breaker.snapshot()["state"] == "closed"
    breaker.record(breaker.admit(), ConnectionError())  # 3 of 6 = 50%
    assert breaker.snapshot()["state"] == "open"


def test_window_forgets_old_calls(storage: BreakerStorage) -> None:
    clock = Clock()
    breaker = make(storage, clock)
    for error in [None, ConnectionError(), None, ConnectionError(), None]:
        breaker.record(breaker.admit(), error)
    clock.now += 11  # the whole window has passed
    breaker.record(breaker.admit(), ConnectionError())
    assert breaker.snapshot()["state"] == "closed"


def test_trial_failure_reopens_and_fallback_answers(storage: BreakerStorage) -> None:
    clock = Clock()
    breaker = make(storage, clock, fallback=lambda x: f"fallback {x}")
    for _ in range(3):
        fail(breaker)
    assert breaker.call(lambda x: x, "a") == "fallback a"
    clock.now += 5
    with pytest.raises(ConnectionError):
        breaker.call(lambda: (_ for _ in ()).throw(ConnectionError()))
    assert breaker.snapshot()["state"] == "open"
    assert breaker.counters["fallbacks"] == 1


def test_errors_outside_failure_types_count_as_success(storage: BreakerStorage) -> None:
    breaker = make(storage, Clock(), failure_types=(ConnectionError,))
    for _ in range(5):
        breaker.record(breaker.admit(), KeyError())
    assert breaker.snapshot()["state"] == "closed"


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="scheme"):
        storage_from_url("mongodb://x")


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A redis-server of our own, so the test can stop and restart it."""
    from taskfleet.devstack import _redis_executable

    return str(_redis_executable()), tmp_path


def _start(exe: str, port: int, data: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(data)],
        stdout=subprocess.DEVNULL,
    )
    wait_for(lambda: reachable(f"redis://127.0.0.1:{port}"), 10, "private redis to listen")
    return proc


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(60)
def test_redis_restarted_while_open(private_redis: tuple[str, Path]) -> None:
    exe, data = private_redis
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    proc = _start(exe, port, data)
    try:
        clock = Clock()
        storage = storage_from_url(url)
        assert isinstance(storage, RedisStorage)
        closed_fallback = make(storage, clock)
        open_fallback = make(storage, clock, storage_fallback="open")
        open_fallback.name = closed_fallback.name
        for _ in range(3):
            fail(closed_fallback)
        assert not open_fallback.admit().allowed
        proc.terminate()
        proc.wait(10)
        # Unreachable: each follows its configured fallback state, and counts it.
        assert closed_fallback.admit().allowed
        with pytest.raises(BreakerOpen):
            open_fallback.call(lambda: "never")
        assert open_fallback.counters["storage_errors"] == 1
        proc = _start(exe, port, data)
        # Restarted empty (no persistence): the breaker is closed again and works.
        assert closed_fallback.admit().allowed
        for _ in range(3):
            fail(closed_fallback)
        assert (
            redis.Redis.from_url(url).hget(f"taskfleet:breaker:{closed_fallback.name}", "state")
            == b"open"
        )
    finally:
        proc.terminate()
        proc.wait(10)
