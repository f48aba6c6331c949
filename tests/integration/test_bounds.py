"""Every Redis key family taskfleet writes is bounded by length or TTL (README "Bounds").

Each test writes more than the bound through the real code path, against the real Redis,
and checks the length or the TTL left. Clocks are passed in where the code takes one, and
keys are made unique per test, so nothing here waits or touches another test's state.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from celery import Celery

from taskfleet.app import create_app
from taskfleet.claims import claim_key, idempotency_ttl
from taskfleet.client import Client
from taskfleet.config import load_settings
from taskfleet.config.autoscale import load_autoscale_settings
from taskfleet.config.resilience import load_resilience_settings
from taskfleet.resilience import runtime as runtime_module
from taskfleet.resilience.deadletter import (
    META_AGES_SUFFIX,
    META_PREFIX,
    DeadLetter,
    store_amqp_metadata,
)
from taskfleet.resilience.middleware import DeadLetterMiddleware, RetryMiddleware
from taskfleet.resilience.runtime import ATTEMPTS_PREFIX, DELIVERIES_PREFIX, build_runtime
from taskfleet.resilience.storage import (
    KEY_PREFIX as BREAKER_PREFIX,
)
from taskfleet.resilience.storage import (
    WINDOW_BUCKETS,
    BreakerConfig,
    Pending,
    RedisStorage,
)
from taskfleet.results.backlog import BacklogGuard, forget_idle_consumers
from taskfleet.results.quarantine import Quarantine
from taskfleet.routing.depth import redis_priority_keys
from taskfleet.scheduler import store as autoscale_store
from taskfleet.scheduler.store import SIZE_FORGET_S, AutoscaleStore
from taskfleet.scheduler.tick import run_tick

CONFIG = BreakerConfig(window=10.0, min_calls=1_000)
BUCKET_S = CONFIG.window / WINDOW_BUCKETS
#: Window fields (calls and failures per bucket) a breaker may hold: one window, plus the
#: bucket being filled.
MAX_WINDOW_FIELDS = 2 * (WINDOW_BUCKETS + 1)
WINDOWS = 20
EXTRA = 7
SHORT_TTL_S = 120
T0 = 1_000_000.0


@pytest.fixture
def unique(redis_client: redis.Redis) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"t:bounds:{uuid.uuid4().hex[:10]}"
    yield prefix
    for key in redis_client.scan_iter(f"{prefix}*", count=1000):
        redis_client.delete(key)


def test_breaker_window_holds_one_window_under_leased_successes(
    redis_client: redis.Redis, unique: str
) -> None:
    """A healthy leased breaker only sends pending successes, refreshing the window's TTL
    with every call: the old buckets must still go."""
    storage, name = RedisStorage(redis_client), f"{unique}:svc"
    for step in range(WINDOWS * WINDOW_BUCKETS):
        storage.acquire(name, CONFIG, T0 + step * BUCKET_S, Pending(successes=1))
    window_key = f"{BREAKER_PREFIX}{name}:w"
    try:
        assert redis_client.hlen(window_key) <= MAX_WINDOW_FIELDS
        assert 0 < redis_client.pttl(window_key) <= CONFIG.window * 1000 + 1000
    finally:
        storage.reset(name)


def test_breaker_window_holds_one_window_when_calls_skip_buckets(
    redis_client: redis.Redis, unique: str
) -> None:
    storage, name = RedisStorage(redis_client), f"{unique}:sparse"
    for step in range(WINDOWS * WINDOW_BUCKETS):
        at = T0 + 3 * step * BUCKET_S
        storage.record(name, CONFIG, at, success=step % 4 != 0, trial=False)
    try:
        assert redis_client.hlen(f"{BREAKER_PREFIX}{name}:w") <= MAX_WINDOW_FIELDS
    finally:
        storage.reset(name)


def test_dead_letter_metadata_records_expire_one_by_one(
    redis_client: redis.Redis, unique: str
) -> None:
    """RabbitMQ dead letters' metadata: a steady trickle keeps the hash alive, yet each
    record goes ``ttl`` after it was stored."""
    dlq = f"{unique}.dlq"
    per_ttl = 10
    for n in range(5 * per_ttl):
        letter = DeadLetter(id=f"job-{n}", kind="k", queue=unique, reason="rejected")
        store_amqp_metadata(
            redis_client, dlq, letter, SHORT_TTL_S, now=T0 + n * SHORT_TTL_S / per_ttl
        )
    meta, ages = META_PREFIX + dlq, META_PREFIX + dlq + META_AGES_SUFFIX
    try:
        assert redis_client.hlen(meta) <= per_ttl + 1
        assert redis_client.zcard(ages) == redis_client.hlen(meta)
        assert redis_client.hexists(meta, f"job-{5 * per_ttl - 1}")
        assert 0 < redis_client.ttl(meta) <= SHORT_TTL_S
    finally:
        redis_client.delete(meta, ages)


def test_idempotency_markers_outlive_the_visibility_timeout(queue_suffix: str) -> None:
    settings = load_settings(
        cpu_queue=f"cpu-bounds-{queue_suffix}", io_queue=f"io-bounds-{queue_suffix}"
    )
    client = Client(create_app(settings))
    job = client.enqueue("cpu.checksum", {"rounds": 1}, idempotency_key=uuid.uuid4().hex)
    broker = redis.Redis.from_url(client.urls.broker_url)
    try:
        ttl = broker.ttl(claim_key(job.id))
        assert settings.visibility_timeout < ttl
        assert ttl <= idempotency_ttl(settings.result_expires, settings.visibility_timeout)
    finally:
        broker.delete(claim_key(job.id), *redis_priority_keys(settings.cpu_queue))


def _stub_task(job_id: str) -> Any:
    request = SimpleNamespace(id=job_id, retries=0, delivery_info={"redelivered": True})
    backend = SimpleNamespace(get_task_meta=lambda *_, **__: {"status": "PENDING"})
    return SimpleNamespace(request=request, backend=backend, name="cpu.checksum")


def test_attempts_and_deliveries_expire(
    redis_client: redis.Redis, services: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    knobs = load_resilience_settings(bookkeeping_ttl=SHORT_TTL_S)
    monkeypatch.setattr(runtime_module, "_current", build_runtime(load_settings(), knobs))
    job_id = f"bounds-{uuid.uuid4().hex}"
    task = _stub_task(job_id)
    RetryMiddleware()._note_failure(task, RuntimeError("down"))
    DeadLetterMiddleware().before_call(task, (), {})
    keys = [ATTEMPTS_PREFIX + job_id, f"{DELIVERIES_PREFIX}{job_id}:0"]
    try:
        for key in keys:
            assert 0 < redis_client.ttl(key) <= SHORT_TTL_S, key
    finally:
        redis_client.delete(*keys)


@pytest.fixture
def autoscale_keys(monkeypatch: pytest.MonkeyPatch, unique: str) -> str:
    """The autoscaler's keys moved under this test's prefix (the real ones are shared)."""
    for name in ("LOCK_KEY", "GATE_KEY", "MEMORY_KEY", "SIZES_KEY", "LOG_KEY", "REPLICAS_KEY"):
        monkeypatch.setattr(autoscale_store, name, f"{unique}:{name.lower()}")
    return unique


def test_autoscale_log_and_sizes_stay_bounded(
    redis_client: redis.Redis, autoscale_keys: str, queue_suffix: str
) -> None:
    """Ticks against a fleet with no worker: the log keeps ``history_cap`` entries, and the
    sizes of workers gone for ``SIZE_FORGET_S`` are forgotten."""
    cap = 3
    settings = load_autoscale_settings(history_cap=cap, inspect_timeout=0.1, interval=1.0)
    app: Celery = create_app(
        load_settings(cpu_queue=f"cpu-as-{queue_suffix}", io_queue=f"io-as-{queue_suffix}")
    )
    store = AutoscaleStore(redis_client, settings.interval)
    for n in range(EXTRA):
        store.set_prefork_size(f"cpu@gone-{n}", 100 + n, 2)
    for at in (T0, T0 + SIZE_FORGET_S / 2, T0 + SIZE_FORGET_S, T0 + SIZE_FORGET_S + 1):
        redis_client.delete(autoscale_store.GATE_KEY)
        assert run_tick(app, settings, redis_client, now=at)["status"] == "decided"
    assert redis_client.llen(autoscale_store.LOG_KEY) == cap
    assert redis_client.hlen(autoscale_store.SIZES_KEY) == 0


def test_persist_stream_over_its_cap_spills_the_oldest(
    redis_client: redis.Redis, unique: str
) -> None:
    stream, group, maxlen = f"{unique}:stream", "g", 20
    redis_client.xgroup_create(stream, group, id="0", mkstream=True)
    for n in range(maxlen + EXTRA):
        fields = {"key": f"{unique}:celery-task-meta-{n}", "value": "{}", "expires": "60"}
        redis_client.xadd(stream, fields)  # type: ignore[arg-type]
    quarantine = Quarantine(redis_client, f"{unique}:quarantine")
    _, moved = BacklogGuard(redis_client, stream, group, maxlen, quarantine).check(force=True)
    assert redis_client.xlen(stream) <= maxlen
    assert moved == EXTRA == quarantine.size()


def test_dead_persister_consumers_are_forgotten(redis_client: redis.Redis, unique: str) -> None:
    stream, group = f"{unique}:stream", "g"
    redis_client.xgroup_create(stream, group, id="0", mkstream=True)
    for n in range(EXTRA):  # persisters that started and died, holding nothing
        redis_client.xgroup_createconsumer(stream, group, f"host:{n}")
    redis_client.xadd(stream, {"key": "k", "value": "{}"})
    redis_client.xreadgroup(group, "holder", {stream: ">"}, count=1)  # one holds an entry
    assert forget_idle_consumers(redis_client, stream, group, idle_ms=0) == EXTRA
    names = [c["name"] for c in redis_client.xinfo_consumers(stream, group)]
    assert names == [b"holder"]


def test_forgetting_spares_a_consumer_that_read_recently(
    redis_client: redis.Redis, unique: str
) -> None:
    stream, group = f"{unique}:stream", "g"
    redis_client.xgroup_create(stream, group, id="0", mkstream=True)
    redis_client.xgroup_createconsumer(stream, group, "live")
    assert forget_idle_consumers(redis_client, stream, group) == 0
    assert len(redis_client.xinfo_consumers(stream, group)) == 1
