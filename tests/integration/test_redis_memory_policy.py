"""A full Redis under ``noeviction`` keeps every queue and state key and refuses result writes.

A private ``redis-server`` with a small ``maxmemory`` holds what a fleet keeps beside its
results: queued jobs (``enqueue_many``), kombu's unacked records, a worker's owner keys (its
heartbeat key has a TTL), a breaker (its window has a TTL), autoscaler state (gate and lock
have TTLs) and idempotency claims (TTL). It is then filled with results through the real
backend script. Under ``noeviction`` every state key is intact and the next result write is
refused whole (no key, no stream entry), waits for room and lands once there is some; under
``volatile-lru``, the contrast, every key with a TTL is evicted, state among them. The
startup check (``config/redis_policy.py``) tells the two apart.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import taskfleet.tasks.builtin  # noqa: F401 - registers cpu.noop for the client
from bench.redis_bytes import make_app, private_redis, url_of
from taskfleet.client import Client, JobSpec
from taskfleet.config.redis_policy import check_urls
from taskfleet.devstack.common import DevStackError
from taskfleet.resilience.storage import BreakerConfig, RedisStorage
from taskfleet.results.backend import STORE_RESULT_LUA
from taskfleet.results.stream import PERSIST_STREAM
from taskfleet.routing.depth import redis_priority_keys
from taskfleet.routing.owners import alive_key, registry_key, tags_key
from taskfleet.scheduler.store import AutoscaleStore
from tests.support.services import missing_service
from tests.support.waiting import wait_for

MAXMEMORY = 8 * 1024 * 1024
#: Result writes per pipelined batch while filling, and a bound far past the budget (~9x).
FILL_BATCH = 200
MAX_FILL_WRITES = 16_000
PAD = "x" * 2048
RESULT_TTL_S, RESULT_RETENTION_S = 3600, 7 * 24 * 3600
#: How long the backend waits for room: short (to see the refusal), and long (to see it land).
SHORT_OOM_RETRY_S, LONG_OOM_RETRY_S = 0.3, 30.0
ROOM_TIMEOUT_S = 10.0
#: The heartbeat's TTL, longer than a worker's (8 s) so a slow machine never expires it here.
ALIVE_TTL_S = 60
QUEUED_JOBS = 200
KEYED_JOBS = 20
OWNER = "host:1:test"
#: kombu's Redis channel keys for unacked deliveries.
UNACKED, UNACKED_INDEX = "unacked", "unacked_index"


@contextlib.contextmanager
def _capped_redis(policy: str) -> Iterator[redis.Redis]:
    """A private Redis capped at ``MAXMEMORY`` with ``policy`` (no redis-server: skip, or fail
    under CI)."""
    with contextlib.ExitStack() as stack:
        try:
            client = stack.enter_context(private_redis(MAXMEMORY, policy))
        except (DevStackError, FileNotFoundError) as exc:
            missing_service("redis-server", str(exc))
        yield client


def _write_state(client: redis.Redis, app: Any) -> None:
    """What a running fleet keeps in Redis besides results (real writers where cheap)."""
    producer = Client(app)
    producer.enqueue_many(JobSpec("cpu.noop", {"n": i}) for i in range(QUEUED_JOBS))
    producer.enqueue_many(
        JobSpec("cpu.noop", {"n": i}, idempotency_key=f"doc-{i}") for i in range(KEYED_JOBS)
    )
    tag, stamp = "tag-1", time.time()
    client.hset(UNACKED, tag, '[{"body": "..."}, "", "cpu"]')
    client.zadd(UNACKED_INDEX, {tag: stamp})
    client.hset(tags_key(OWNER), tag, stamp)
    client.zadd(registry_key(UNACKED), {OWNER: stamp})
    client.set(alive_key(OWNER), "1", ex=ALIVE_TTL_S)
    breaker = RedisStorage(client)
    breaker.record("payments", BreakerConfig(), time.time(), success=False, trial=False)
    scaler = AutoscaleStore(client, interval=60)
    assert scaler.open_gate("tick-1")
    assert scaler.tick_lock().acquire()
    scaler.save_memory({"cpu": {"cooldown_until": 0}})


def _snapshot(client: redis.Redis) -> dict[bytes, bytes | None]:
    """Every key but results and the persistence stream, with its serialized value."""
    keys = [
        key
        for key in client.scan_iter(count=1000)
        if not key.startswith(b"celery-task-meta-") and key != PERSIST_STREAM.encode()
    ]
    return {key: client.dump(key) for key in keys}


def _fill(client: redis.Redis) -> int:
    """Write results as the backend does until Redis refuses some; how many it refused."""
    script = client.register_script(STORE_RESULT_LUA)
    refused = 0
    for start in range(0, MAX_FILL_WRITES, FILL_BATCH):
        pipe = client.pipeline(transaction=False)
        for i in range(start, start + FILL_BATCH):
            meta = f'{{"status": "SUCCESS", "result": "{PAD}", "task_id": "fill-{i}"}}'
            script(
                keys=[f"celery-task-meta-fill-{i}", PERSIST_STREAM],
                args=[meta, RESULT_TTL_S, RESULT_RETENTION_S],
                client=pipe,
            )
        replies = pipe.execute(raise_on_error=False)
        refused += sum(isinstance(r, redis.exceptions.OutOfMemoryError) for r in replies)
        if refused:
            return refused
    return refused


def _queued(client: redis.Redis) -> int:
    return sum(int(client.llen(key)) for key in redis_priority_keys("cpu"))


def test_noeviction_keeps_every_state_key_and_refuses_result_writes() -> None:
    with _capped_redis("noeviction") as client:
        app = make_app(url_of(client))
        _write_state(client, app)
        state = _snapshot(client)
        assert len(state) >= 10 + KEYED_JOBS  # queues, unacked, owner, breaker, autoscaler, claims
        assert _fill(client) > 0
        assert _snapshot(client) == state  # every queue, record and state key, byte for byte
        assert int(client.info("stats")["evicted_keys"]) == 0
        (report,) = check_urls([url_of(client)])
        assert report.safe

        # Beyond the budget the backend's write is refused whole (no key, no stream entry);
        # it waits for room up to ``oom_retry_s``, then raises the refusal.
        backend = app.backend
        stream_before = client.xlen(PERSIST_STREAM)
        backend.oom_retry_s = SHORT_OOM_RETRY_S
        with pytest.raises(redis.exceptions.OutOfMemoryError, match="maxmemory"):
            backend.store_result("over-budget", {"ok": True}, "SUCCESS")
        assert backend.oom_refusals > 0
        assert client.get(backend.get_key_for_task("over-budget")) is None
        assert client.xlen(PERSIST_STREAM) == stream_before
        # A producer is refused too, before anything is queued (the job stays with the caller).
        queued = _queued(client)
        assert queued == QUEUED_JOBS + KEYED_JOBS
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            Client(app).enqueue_many([JobSpec("cpu.noop", {"n": -1})])
        assert _queued(client) == queued


def test_a_result_write_waits_for_room_instead_of_being_dropped() -> None:
    with _capped_redis("noeviction") as client:
        app = make_app(url_of(client))
        _fill(client)
        backend, refusals = app.backend, app.backend.oom_refusals
        backend.oom_retry_s = LONG_OOM_RETRY_S
        writer = threading.Thread(
            target=backend.store_result, args=("waits", {"ok": True}, "SUCCESS"), daemon=True
        )
        writer.start()
        wait_for(lambda: backend.oom_refusals > refusals, ROOM_TIMEOUT_S, "a refused write")
        assert writer.is_alive()
        client.config_set("maxmemory", 2 * MAXMEMORY)  # room again (results expiring, say)
        writer.join(ROOM_TIMEOUT_S)
        assert not writer.is_alive()
        assert client.get(backend.get_key_for_task("waits")) is not None
        last = client.xrevrange(PERSIST_STREAM, count=1)[0][1]
        assert last[b"key"] == backend.get_key_for_task("waits")


def test_volatile_lru_evicts_every_state_key_that_carries_a_ttl() -> None:
    """The contrast, so the test can fail: the same fill under an evicting policy loses state.

    Redis refuses a write under ``volatile-lru`` only once no key with a TTL is left, so by
    then every such key is gone: the heartbeat, breaker window, autoscaler gate and lock and
    the idempotency claims, with the results. Keys without a TTL (queues) stay.
    """
    with _capped_redis("volatile-lru") as client:
        app = make_app(url_of(client))
        _write_state(client, app)
        state = _snapshot(client)
        with_ttl = {key for key in state if int(client.pttl(key)) > 0}
        assert alive_key(OWNER).encode() in with_ttl
        assert len(with_ttl) >= 4 + KEYED_JOBS
        assert _fill(client) > 0  # once nothing with a TTL is left (the stream has none)
        assert int(client.info("stats")["evicted_keys"]) > 0
        after = _snapshot(client)
        assert {key for key in state if key not in after} == with_ttl
        assert all(after[key] == state[key] for key in state.keys() - with_ttl)
        (report,) = check_urls([url_of(client)])
        assert not report.safe
        assert "volatile-lru" in report.message()
