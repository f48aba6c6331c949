"""Rate limits at enqueue and admission control on real Redis (no worker needed)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from taskfleet.app import create_app
from taskfleet.async_client import AsyncClient
from taskfleet.client import BatchTooLarge, Client, Overloaded, RateLimited
from taskfleet.config import load_settings
from taskfleet.config.limits import LimitSettings, load_limit_settings
from taskfleet.handles import JobHandle
from taskfleet.publishing.base import CLIENT_HEADER
from taskfleet.ratelimit.limiter import STATE_PREFIX, STATS_PREFIX, Limit, Limiter
from taskfleet.ratelimit.policies import TokenBucket
from taskfleet.ratelimit.store_base import ALLOWED, REFUSED
from taskfleet.routing.depth import redis_priority_keys, redis_queue_depths
from tests.support.waiting import wait_for

#: A port on loopback nothing listens on: "Redis is down".
DEAD_REDIS = "redis://127.0.0.1:1/0"
DEADLINE_S = 10.0


@pytest.fixture
def app(redis_env: dict[str, str]) -> Iterator[Celery]:
    """An app on queues of this test's own (no worker consumes them)."""
    tag = uuid.uuid4().hex[:8]
    overrides = {
        k.removeprefix("TASKFLEET_").lower(): v
        for k, v in redis_env.items()
        if k.startswith("TASKFLEET_")
    }
    overrides |= {"cpu_queue": f"cpu-lim-{tag}", "io_queue": f"io-lim-{tag}"}
    app = create_app(load_settings(**overrides))
    yield app
    client = redis.Redis.from_url(redis_env["TASKFLEET_REDIS_URL"])
    for queue in (overrides["cpu_queue"], overrides["io_queue"]):
        client.delete(*redis_priority_keys(queue))


def _depth(client: Client, redis_client: redis.Redis) -> int:
    return redis_queue_depths(redis_client, [client.topology.cpu_queue])[client.topology.cpu_queue]


def test_over_its_limit_enqueue_raises_and_publishes_nothing(
    app: Celery, redis_client: redis.Redis
) -> None:
    who = f"acme-{uuid.uuid4().hex[:6]}"
    limits = load_limit_settings(enqueue={who: "5/s burst=3"})
    client = Client(app, client_id=who, limits=limits)
    for _ in range(3):
        client.enqueue("cpu.noop")
    with pytest.raises(RateLimited) as refused:
        client.enqueue("cpu.noop")
    assert 0 < refused.value.retry_after <= 0.2 + 1e-3
    assert _depth(client, redis_client) == 3  # the refused job was not published
    envelope = json.loads(redis_client.lindex(client.topology.cpu_queue + "\x06\x165", 0) or b"{}")
    assert envelope["headers"][CLIENT_HEADER] == who
    counters = redis_client.hgetall(f"{STATS_PREFIX}client:{who}")
    assert counters == {b"allowed": b"3", b"refused": b"1"}
    # Another client (no "*" entry) and a producer with no client id are not limited.
    anonymous = Client(app, limits=limits)
    for _ in range(5):
        client.enqueue("cpu.noop", client_id="other")
        anonymous.enqueue("cpu.noop")
    assert _depth(client, redis_client) == 13
    client.close()
    anonymous.close()


def test_enqueue_many_is_all_or_nothing(app: Celery, redis_client: redis.Redis) -> None:
    who = f"batch-{uuid.uuid4().hex[:6]}"
    client = Client(app, limits=load_limit_settings(enqueue={"*": "10/s burst=5"}))
    with pytest.raises(BatchTooLarge):
        client.enqueue_many([("cpu.noop", i) for i in range(6)], client_id=who)
    client.enqueue_many([("cpu.noop", i) for i in range(4)], client_id=who)
    with pytest.raises(RateLimited) as refused:
        client.enqueue_many([("cpu.noop", i) for i in range(3)], client_id=who)
    assert refused.value.retry_after == pytest.approx(0.2, abs=0.05)
    assert _depth(client, redis_client) == 4
    client.close()


def test_idle_client_state_expires_by_itself(app: Celery, redis_client: redis.Redis) -> None:
    who = f"idle-{uuid.uuid4().hex[:6]}"
    client = Client(app, client_id=who, limits=load_limit_settings(enqueue={who: "20/s burst=4"}))
    client.enqueue_many([("cpu.noop", i) for i in range(4)])
    key = f"{STATE_PREFIX}enqueue:client:{who}"
    assert 0 < redis_client.pttl(key) <= 4 * 50 + 2  # the bucket is full again in 200 ms
    wait_for(lambda: not redis_client.exists(key), DEADLINE_S, "the idle bucket to expire")
    client.close()


@pytest.mark.parametrize(("fallback", "admitted"), [("allow", 4), ("deny", 0), ("local", 2)])
def test_redis_down_follows_the_configured_fallback(fallback: str, admitted: int) -> None:
    limiter = Limiter(DEAD_REDIS, fallback=fallback)  # type: ignore[arg-type]
    limits = [Limit("client:x", TokenBucket("1/s", burst=2))]
    verdicts = [limiter.check(limits) for _ in range(4)]
    assert sum(v.outcome == ALLOWED for v in verdicts) == admitted
    assert all(v.outcome in (ALLOWED, REFUSED) for v in verdicts)


def _overload_settings(**bounds: object) -> LimitSettings:
    return load_limit_settings(overload_refresh_ms=50, overload_retry_after=0.5, **bounds)


def test_overload_sheds_low_priority_admits_critical_and_resumes(
    app: Celery, redis_client: redis.Redis
) -> None:
    client = Client(app, limits=_overload_settings(overload_backlog=20))
    queue = client.topology.cpu_queue
    client.enqueue_many([("cpu.noop", i) for i in range(25)])  # past the bound

    def shed() -> Overloaded | None:
        try:
            client.enqueue("cpu.noop", priority="normal")
        except Overloaded as exc:
            return exc
        return None

    refusal = wait_for(shed, DEADLINE_S, "low-priority enqueues to be shed")
    assert refusal.retry_after == 0.5
    assert refusal.queue == queue
    depth = _depth(client, redis_client)
    with pytest.raises(Overloaded):
        client.enqueue_many([("cpu.noop", 1), ("cpu.noop", 2)], priority="high")
    client.enqueue("cpu.noop", priority="critical")  # still admitted
    assert _depth(client, redis_client) == depth + 1
    assert int(redis_client.hget(f"{STATS_PREFIX}queue:{queue}", "shed") or 0) >= 3
    redis_client.delete(*redis_priority_keys(queue))  # the backlog drains
    wait_for(lambda: shed() is None, DEADLINE_S, "admission to resume")
    client.close()


def test_overload_by_oldest_job_age(app: Celery, redis_client: redis.Redis) -> None:
    client = Client(app, limits=_overload_settings(overload_age=0.3))
    client.enqueue("cpu.noop", priority="low")

    def shed() -> bool:
        try:
            client.enqueue("cpu.noop", priority="low")
        except Overloaded:
            return True
        return False

    started = time.monotonic()
    assert wait_for(shed, DEADLINE_S, "a stuck head to shed the queue")
    assert time.monotonic() - started >= 0.3
    redis_client.delete(*redis_priority_keys(client.topology.cpu_queue))
    wait_for(lambda: not shed(), DEADLINE_S, "admission to resume once drained")
    client.close()


def test_the_bound_is_read_from_a_cached_reading(app: Celery) -> None:
    client = Client(app, limits=_overload_settings(overload_backlog=1_000_000))
    started = time.monotonic()
    for i in range(500):
        client.enqueue("cpu.noop", i)
    elapsed = time.monotonic() - started
    assert client.gate is not None
    assert client.gate.overload is not None
    assert client.gate.overload.readings_taken <= elapsed / 0.05 + 2
    client.close()


def test_a_limited_enqueue_publishes_in_the_limits_script(
    app: Celery, redis_client: redis.Redis
) -> None:
    """The broker is the limits' Redis: the GCRA script pushes the jobs it admits."""
    who = f"fused-{uuid.uuid4().hex[:6]}"
    client = Client(app, client_id=who, limits=load_limit_settings(enqueue={who: "100/s"}))
    assert client.gate is not None
    assert client.gate.fused
    sent: list[object] = []
    client.publisher.publish = lambda *a: sent.append(a) or []  # type: ignore[method-assign]
    handles = client.enqueue_many([("cpu.noop", i) for i in range(5)])
    handle = client.enqueue("cpu.noop", 5)
    assert sent == []  # the publisher was never asked
    assert _depth(client, redis_client) == 6
    assert [h.id for h in handles] + [handle.id] == [
        json.loads(m)["headers"]["id"]
        for m in reversed(redis_client.lrange(client.topology.cpu_queue + "\x06\x165", 0, -1))
    ]
    client.close()


def test_contract_process_takes_a_client_id(app: Celery, redis_client: redis.Redis) -> None:
    """``process_contract(..., client_id=)``: the client's enqueue limit, and the header."""
    from taskfleet.contracts.api import process_contract
    from taskfleet.tasks.contract_jobs import process_contract as contract_job
    from tests.unit.test_contracts import AS_OF, doc

    who = f"contracts-{uuid.uuid4().hex[:6]}"
    client = Client(app, limits=load_limit_settings(enqueue={who: "1/s burst=1"}))
    process_contract(doc(), client, as_of=AS_OF, client_id=who)
    (published,) = [
        json.loads(m)
        for key in redis_priority_keys(client.topology.cpu_queue)
        for m in redis_client.lrange(key, 0, -1)
    ]
    assert published["headers"][CLIENT_HEADER] == who
    with pytest.raises(RateLimited):
        process_contract(doc(), client, as_of="2025-03-02", client_id=who)
    assert _depth(client, redis_client) == 1
    # The job itself accepts the client id (a bare send_task caller may pass it).
    with_id, without = contract_job(doc(), AS_OF, client_id=who), contract_job(doc(), AS_OF)
    with_id.pop("cache_hit", None)
    without.pop("cache_hit", None)
    assert with_id == without
    client.close()


def test_an_opted_in_kind_is_answered_stale_while_overloaded(
    app: Celery, redis_client: redis.Redis, services: dict[str, str]
) -> None:
    from taskfleet.cache.factory import open_cache
    from taskfleet.cache.reuse import REUSE_PREFIX
    from taskfleet.contracts.pipeline import reuse_key
    from tests.unit.test_contracts import doc

    document = doc(reference=f"C-{uuid.uuid4().hex[:6]}")
    cached = {"summary": "computed earlier", "cache_hit": False}
    cache = open_cache([services["TASKFLEET_REDIS_URL"]], listen=False)
    cache.set(f"{REUSE_PREFIX}:contract.process:{reuse_key((document,), {})}", cached)
    limits = _overload_settings(overload_backlog=3, overload_stale=["contract.process"])
    client = Client(app, limits=limits)
    client.enqueue_many([("cpu.noop", i) for i in range(5)])

    def shed() -> bool:
        try:
            client.enqueue("cpu.noop")
        except Overloaded:
            return True
        return False

    wait_for(shed, DEADLINE_S, "the queue to be overloaded")
    depth = _depth(client, redis_client)
    handle = client.enqueue("contract.process", document)
    assert handle.result(5) == {**cached, "cache_hit": True, "stale": True}
    assert _depth(client, redis_client) == depth  # answered, not published

    async def enqueue_async() -> JobHandle:
        async_client = AsyncClient(client)
        try:
            return await async_client.enqueue("contract.process", document)
        finally:
            await async_client.close()

    assert asyncio.run(enqueue_async()).result(5)["stale"] is True  # the async path too
    assert _depth(client, redis_client) == depth
    with pytest.raises(Overloaded):  # nothing cached for this one: shed as usual
        client.enqueue("contract.process", doc(reference=f"C-{uuid.uuid4().hex[:6]}"))
    queue = client.topology.cpu_queue
    assert redis_client.hget(f"{STATS_PREFIX}queue:{queue}", "stale") == b"2"
    client.close()


def test_limits_status_shows_counters_limits_and_shedding(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from taskfleet.cli.app import cli

    who = f"status-{uuid.uuid4().hex[:6]}"
    table = {who: "2/s burst=2"}
    client = Client(app, client_id=who, limits=load_limit_settings(enqueue=table))
    client.enqueue_many([("cpu.noop", 1), ("cpu.noop", 2)])
    with pytest.raises(RateLimited):
        client.enqueue("cpu.noop")
    monkeypatch.setenv("TASKFLEET_LIMITS_ENQUEUE", json.dumps(table))
    monkeypatch.setenv("TASKFLEET_LIMITS_OVERLOAD_BACKLOG", "1")
    monkeypatch.setenv("TASKFLEET_CPU_QUEUE", client.topology.cpu_queue)
    runner = CliRunner()
    one = runner.invoke(cli, ["limits", "status", who, "--json"])
    assert one.exit_code == 0, one.output
    (scope,) = json.loads(one.output)["scopes"]
    assert scope["counters"] == {"allowed": 2, "refused": 1}
    assert "TokenBucket" in scope["limits"]["enqueue"]
    every = runner.invoke(cli, ["limits", "status"])
    assert every.exit_code == 0, every.output
    assert f"client:{who}  allowed 2  refused 1" in every.output
    assert f"queue {client.topology.cpu_queue}: backlog 2" in every.output
    assert "SHEDDING" in every.output
    client.close()
