"""Cache faults on real servers: Redis down, Postgres down then back, a persister killed with
a non-empty buffer, two processes racing on one key. The servers that go down are a private
embedded stack; the session's Redis and Postgres stay up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import Engine

from taskfleet.cache.factory import open_cache
from taskfleet.cache.tiers import CacheUnavailable
from taskfleet.config.cache import load_cache_settings
from taskfleet.devstack import EmbeddedStack, StackURLs
from taskfleet.results.persister import ResultPersister
from taskfleet.results.store import make_engine
from taskfleet.results.stream import PERSIST_GROUP
from tests.support.services import TEST_DATA_DIR, private_stack
from tests.support.waiting import wait_for

WRITES = 200
#: Deadline for pub/sub invalidations to reach a process's L1.
INVALIDATION_DEADLINE_S = 10.0
FAULT_STACK_DIR = TEST_DATA_DIR.with_name(TEST_DATA_DIR.name + "-faults")


@pytest.fixture(scope="module")
def fault_stack() -> Iterator[tuple[EmbeddedStack, StackURLs]]:
    """A private Redis + Postgres pair that tests may stop and restart (same ports)."""
    with private_stack(FAULT_STACK_DIR) as stack_and_urls:
        yield stack_and_urls


def _names() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"tfc-{tag}", f"tfc-stream-{tag}"


@pytest.mark.timeout(120)
def test_redis_down_l1_and_l3_serve_and_writes_fail_loudly(
    fault_stack: tuple[EmbeddedStack, StackURLs], services: dict[str, str], engine: Engine
) -> None:
    stack, urls = fault_stack
    namespace, stream = _names()
    cache = open_cache(
        ["memory://", urls.redis_url, services["TASKFLEET_DATABASE_URL"]],
        load_cache_settings(namespace=namespace),
        stream=stream,
        engine=engine,
    )
    assert cache.l1 is not None
    assert cache.l2 is not None
    try:
        # Subscribing drops L1 too (in the listener's thread): let that happen first.
        wait_for(cache.listener.subscribed.is_set, 10, "subscription")  # type: ignore[union-attr]
        cache.set_many({"hot": 1, "cold": 2})
        assert ResultPersister(cache.l2.client, engine, stream=stream).drain() == 2
        cache.l1.delete(["cold"])  # only L3 can answer for it
        assert len(cache.l1) == 1  # "hot": the drop below is what empties L1
        stack.stop()
        listener = cache.listener
        assert listener is not None
        # Messages may have been missed just before the break: the listener drops L1 ...
        # (in its own thread, just after it marks itself unsubscribed: wait for the drop too,
        # or it could land between the reads below and undo their back-fill)
        l1 = cache.l1
        wait_for(
            lambda: not listener.subscribed.is_set() and len(l1) == 0,
            10,
            "the listener to notice and drop L1",
        )
        assert cache.get("cold") == 2  # ... L2 fails over to L3, which back-fills L1 ...
        assert cache.get("hot") == 1
        hits = cache.stats()["l1"]["hits"]
        assert cache.get("cold") == 2
        assert cache.get("hot") == 1
        assert cache.stats()["l1"]["hits"] == hits + 2
        with pytest.raises(CacheUnavailable):
            cache.set("new", 3)
        with pytest.raises(CacheUnavailable):
            cache.invalidate("cold")
        assert cache.get("new") is None  # nothing half-written to L1
        assert cache.stats()["l2"]["errors"] >= 2
    finally:
        stack.ensure_running()
        cache.close()


PERSISTER_CHILD = """
import sys, time
import redis
from taskfleet.results.persister import ResultPersister
from taskfleet.results.store import make_engine
p = ResultPersister(redis.Redis.from_url(sys.argv[1]), make_engine(sys.argv[2]),
                    stream=sys.argv[3], consumer="doomed", retry_delay_s=0.1)
p.start()
while True:
    time.sleep(1)
"""


@pytest.mark.timeout(180)
def test_postgres_down_then_back_and_killed_persister_lose_nothing(
    fault_stack: tuple[EmbeddedStack, StackURLs],
    services: dict[str, str],
    redis_client: redis.Redis,
) -> None:
    stack, urls = fault_stack
    namespace, stream = _names()
    fault_engine = make_engine(urls.database_url, pool_size=1)
    cache = open_cache(
        ["memory://", services["TASKFLEET_REDIS_URL"], urls.database_url],
        load_cache_settings(namespace=namespace),
        stream=stream,
        engine=fault_engine,
    )
    assert cache.l3 is not None
    cache.l3.clear()
    child = None
    try:
        stack.stop()  # Postgres (and this stack's unused Redis) down
        for i in range(WRITES):
            cache.set(f"doc:{i}", {"i": i})  # acknowledged: in Redis and in the stream
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                PERSISTER_CHILD,
                services["TASKFLEET_REDIS_URL"],
                urls.database_url,
                stream,
            ]
        )

        def held_by_child() -> int:
            try:
                pending = redis_client.xpending(stream, PERSIST_GROUP)
            except redis.ResponseError:  # the child has not created the group yet
                return 0
            consumers = {c["name"]: c["pending"] for c in pending.get("consumers", [])}
            return int(consumers.get(b"doomed", consumers.get("doomed", 0)))

        wait_for(held_by_child, 30, "the persister to hold entries it cannot write")
        os.kill(child.pid, signal.SIGKILL)  # dies with a non-empty buffer
        child.wait(10)
        stack.ensure_running()  # Postgres back, same port
        survivor = ResultPersister(
            redis_client, fault_engine, stream=stream, claim_idle_ms=1, retry_delay_s=0.1
        )
        assert survivor.drain() == WRITES
        assert cache.l3.count() == WRITES
        assert survivor.backlog() == 0
        cache.l1.clear()  # type: ignore[union-attr]
        redis_client.delete(*[f"{namespace}:v:doc:{i}" for i in range(WRITES)])
        assert cache.get("doc:7") == {"i": 7}  # read back from L3
    finally:
        if child is not None and child.poll() is None:
            child.kill()
        stack.ensure_running()
        redis_client.delete(stream)
        cache.close()
        fault_engine.dispose()


WRITER_CHILD = """
import sys
from taskfleet.cache.factory import open_cache
from taskfleet.config.cache import load_cache_settings
cache = open_cache(["memory://", sys.argv[1], sys.argv[2]],
                   load_cache_settings(namespace=sys.argv[3]), stream=sys.argv[4])
print("go", flush=True)
for i in range(int(sys.argv[5])):
    cache.set("contested", {"writer": "child", "i": i})
print(cache.get("contested"), flush=True)
"""


@pytest.mark.timeout(120)
def test_two_processes_racing_on_one_key_agree_in_every_tier(
    services: dict[str, str], engine: Engine, redis_client: redis.Redis
) -> None:
    namespace, stream = _names()
    cache = open_cache(
        ["memory://", services["TASKFLEET_REDIS_URL"], services["TASKFLEET_DATABASE_URL"]],
        load_cache_settings(namespace=namespace),
        stream=stream,
        engine=engine,
    )
    assert cache.l1 is not None
    assert cache.l2 is not None
    assert cache.l3 is not None
    try:
        wait_for(cache.listener.subscribed.is_set, 10, "subscription")  # type: ignore[union-attr]
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER_CHILD, services["TASKFLEET_REDIS_URL"],
             services["TASKFLEET_DATABASE_URL"], namespace, stream, str(WRITES)],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"go"
        for i in range(WRITES):  # both processes write at the same time
            cache.set("contested", {"writer": "parent", "i": i})
        child.communicate(timeout=60)
        ResultPersister(redis_client, engine, stream=stream).drain()
        in_l2 = json.loads(cache.l2.get_many(["contested"])["contested"])
        in_l3 = json.loads(cache.l3.get_many(["contested"])["contested"])
        assert in_l2 == in_l3
        assert in_l2["i"] == WRITES - 1
        wait_for(
            lambda: cache.get("contested") == in_l2,
            INVALIDATION_DEADLINE_S,
            "our L1 to agree with L2",
        )
    finally:
        redis_client.delete(stream)
        cache.clear()
        cache.close()
