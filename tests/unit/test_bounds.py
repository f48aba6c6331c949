"""Every in-process buffer that lives as long as its process has a bound (README "Bounds").

Each test writes more than the bound through the real code and checks what is kept, with
injected clocks (no sleeping). The Redis key families are in ``tests/integration``.
"""

from __future__ import annotations

import math
from typing import Any

import redis

from taskfleet.cache.stats import LATENCY_WINDOW, TierStats
from taskfleet.claims import IDEMPOTENCY_VISIBILITY_TIMEOUTS, idempotency_ttl
from taskfleet.config.settings import DEFAULT_VISIBILITY_TIMEOUT_S
from taskfleet.resilience.memory_storage import MemoryStorage
from taskfleet.resilience.storage import WINDOW_BUCKETS, BreakerConfig, Pending
from taskfleet.results.persister import RETRY_DELAYS_KEPT, ResultPersister
from taskfleet.routing.atomic_fetch import PACKED_CALLS_MAX, AtomicFetch
from taskfleet.scheduler.model import PoolMemory, TrendPoint
from taskfleet.scheduler.store import SIZE_FORGET_S, last_seen, memory_from, memory_to

CONFIG = BreakerConfig(window=10.0, min_calls=1_000)
BUCKET_S = CONFIG.window / WINDOW_BUCKETS
#: How many window lengths a test runs a breaker for (far more buckets than one window).
WINDOWS = 20
EXTRA = 7


def _buckets(storage: MemoryStorage, name: str) -> dict[int, list[int]]:
    return storage._data[name]["buckets"]  # type: ignore[no-any-return]


def test_breaker_window_stays_one_window_under_leased_successes() -> None:
    """A healthy breaker under a lease only sends pending successes: old buckets still go."""
    storage, now = MemoryStorage(), 1_000_000.0
    for step in range(WINDOWS * WINDOW_BUCKETS):
        storage.acquire("svc", CONFIG, now + step * BUCKET_S, Pending(successes=1))
    assert len(_buckets(storage, "svc")) <= WINDOW_BUCKETS + 1


def test_breaker_window_stays_one_window_when_calls_skip_buckets() -> None:
    """Calls three buckets apart: each record must drop every expired bucket, not one."""
    storage, now = MemoryStorage(), 1_000_000.0
    for step in range(WINDOWS * WINDOW_BUCKETS):
        at = now + 3 * step * BUCKET_S
        storage.acquire("svc", CONFIG, at, Pending(successes=1))
        storage.record("svc", CONFIG, at, success=step % 4 != 0, trial=False)
    assert len(_buckets(storage, "svc")) <= WINDOW_BUCKETS + 1


def test_autoscale_forgets_sizes_of_workers_gone_for_an_hour() -> None:
    now = 1_000_000.0
    known = [f"cpu@pod-{n}" for n in range(10)]
    seen, gone = last_seen({}, known, known[:1], now)
    assert gone == []
    assert set(seen) == set(known)
    later = now + SIZE_FORGET_S
    seen, gone = last_seen(seen, known, known[:1], later)
    assert sorted(gone) == sorted(known[1:])
    assert seen == {known[0]: later}


def test_autoscale_trend_keeps_only_its_samples() -> None:
    keep = 6
    memory = PoolMemory(trend=[TrendPoint(float(t), t, 0.0) for t in range(keep + EXTRA)])
    stored = memory_to(memory, keep)
    assert len(stored["trend"]) == keep
    assert memory_from(stored).trend[-1].at == float(keep + EXTRA - 1)


def test_idempotency_keys_outlive_the_redelivery_window() -> None:
    vt = DEFAULT_VISIBILITY_TIMEOUT_S
    assert idempotency_ttl(60, vt) == math.ceil(vt * IDEMPOTENCY_VISIBILITY_TIMEOUTS)
    assert idempotency_ttl(60, vt) > vt
    week = 7 * 24 * 3600
    assert idempotency_ttl(week, vt) == week


def test_persister_keeps_only_recent_retry_delays() -> None:
    client = redis.Redis(host="127.0.0.1", port=1)  # never connected: no command is sent
    persister = ResultPersister(client, engine=None)  # type: ignore[arg-type]
    for n in range(RETRY_DELAYS_KEPT + EXTRA):
        persister.retry_delays.append(float(n))
    assert len(persister.retry_delays) == RETRY_DELAYS_KEPT
    assert persister.retry_delays[-1] == float(RETRY_DELAYS_KEPT + EXTRA - 1)


def test_cache_tier_latency_samples_are_a_window() -> None:
    stats = TierStats("l1")
    for n in range(LATENCY_WINDOW + EXTRA):
        stats.record_read(n, hits=1, misses=0)
    assert len(stats._samples) == LATENCY_WINDOW


def test_fetch_script_calls_are_packed_for_a_few_queue_sets_only() -> None:
    waiter: Any = None  # only packing is exercised: nothing waits
    fetch = AtomicFetch("0" * 40, ("unacked", "unacked_index", "tags"), True, waiter)
    connection: Any = redis.Connection()  # type: ignore[no-untyped-call]  # never connected
    for n in range(PACKED_CALLS_MAX + EXTRA):
        fetch.packed_call(connection, ("BRPOP", f"queue-{n}", 1))
    assert len(fetch._packed) <= PACKED_CALLS_MAX
