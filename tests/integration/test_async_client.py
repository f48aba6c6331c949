"""AsyncClient on Redis: natively async, publishing and waiting without a thread per call.

Every test runs its coroutine on a loop whose default executor is tiny (or refuses work), so
a call that needed a thread per publish or per waiter would stall or fail instead of passing.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
import redis
from celery import states
from sqlalchemy.engine import Engine

from taskfleet.app import create_app
from taskfleet.async_client import AsyncClient
from taskfleet.client import Client, JobFailed
from taskfleet.config import load_settings
from taskfleet.results.store import fetch_result
from taskfleet.routing.depth import redis_priority_keys, redis_queue_depths
from tests.support.waiting import wait_for
from tests.support.workers import Fleet

T = TypeVar("T")
WAITERS = 2_000
EXECUTOR_THREADS = 2
#: Waits on jobs that never finish, started before the others: more than the pool's threads.
STUCK_WAITS = 2 * EXECUTOR_THREADS
#: Generous: 2,000 checksum jobs take the test fleet a few seconds.
ALL_RESULTS_DEADLINE_S = 120.0
PERSIST_TIMEOUT_S = 30.0
SAMPLE_EVERY_S = 0.01
SHORT_TIMEOUT_S = 0.3


class RefusingExecutor(ThreadPoolExecutor):
    """A default executor that fails any call: the code under test must not need a thread."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        raise AssertionError(f"a thread was asked for: {fn!r}")


def run(main: Coroutine[Any, Any, T], executor: ThreadPoolExecutor) -> T:
    """Run ``main`` on a new loop whose default executor is ``executor``."""

    async def with_executor() -> T:
        asyncio.get_running_loop().set_default_executor(executor)
        return await main

    return asyncio.run(with_executor())


@pytest.fixture
def idle_client(redis_env: dict[str, str], redis_client: redis.Redis) -> Iterator[Client]:
    """A client on queues no worker consumes (this test owns them)."""
    suffix = f"async-{uuid.uuid4().hex[:6]}"
    settings = load_settings(
        broker_url=redis_env["TASKFLEET_BROKER_URL"],
        redis_url=redis_env["TASKFLEET_REDIS_URL"],
        database_url=redis_env["TASKFLEET_DATABASE_URL"],
        cpu_queue=f"{redis_env['TASKFLEET_CPU_QUEUE']}-{suffix}",
        io_queue=f"{redis_env['TASKFLEET_IO_QUEUE']}-{suffix}",
    )
    client = Client(create_app(settings))
    yield client
    for queue in (settings.cpu_queue, settings.io_queue):
        redis_client.delete(*redis_priority_keys(queue))
    client.close()


def test_publishing_takes_no_thread(idle_client: Client, redis_client: redis.Redis) -> None:
    key = f"async-{uuid.uuid4().hex}"

    async def main() -> list[Any]:
        aclient = AsyncClient(idle_client)
        one = await aclient.enqueue("cpu.noop", 1, priority="critical", client_id="async")
        many = await aclient.enqueue_many([("io.noop", i) for i in range(20)])
        keyed = await aclient.enqueue_many([{"kind": "cpu.noop", "idempotency_key": key}] * 2)
        again = await aclient.enqueue("cpu.noop", 1, idempotency_key=key)
        await aclient.close()
        return [one, *many, *keyed, again]

    handles = run(main(), RefusingExecutor())
    assert [h.deduplicated for h in handles[-3:]] == [False, True, True]
    assert len({h.id for h in handles}) == 22
    queues = [idle_client.topology.cpu_queue, idle_client.topology.io_queue]
    assert sum(redis_queue_depths(redis_client, queues).values()) == 22


def test_thousands_of_waits_share_no_thread_pool(redis_fleet: Fleet) -> None:
    """2,000 concurrent ``result`` calls on jobs a real worker runs, with a 2-thread pool.

    Waits on jobs that never finish start first and outlast the others: a wait that held a
    thread would leave none for the 2,000 until those time out.
    """
    client = Client(redis_fleet.app())
    stuck = [client.handle(str(uuid.uuid4()), "cpu.checksum") for _ in range(STUCK_WAITS)]

    async def main() -> tuple[list[Any], int, int]:
        aclient = AsyncClient(client)
        blockers = [
            asyncio.ensure_future(aclient.result(h, 2 * ALL_RESULTS_DEADLINE_S)) for h in stuck
        ]
        handles = await aclient.enqueue_many(
            [("cpu.checksum", {"rounds": 1, "n": n}) for n in range(WAITERS)]
        )
        baseline = peak = threading.active_count()
        waits = asyncio.ensure_future(
            asyncio.gather(*(aclient.result(h, ALL_RESULTS_DEADLINE_S) for h in handles))
        )
        async with asyncio.timeout(ALL_RESULTS_DEADLINE_S):
            while not waits.done():
                peak = max(peak, threading.active_count())
                await asyncio.wait({waits}, timeout=SAMPLE_EVERY_S)
        values = waits.result()
        assert not any(b.done() for b in blockers)
        for blocker in blockers:
            blocker.cancel()
        await asyncio.gather(*blockers, return_exceptions=True)
        await aclient.close()
        for at in (0, WAITERS // 2, WAITERS - 1):  # the sync client reads the same results
            assert values[at] == handles[at].result(timeout=1)
        return values, baseline, peak

    values, baseline, peak = run(main(), ThreadPoolExecutor(max_workers=EXECUTOR_THREADS))
    assert len(values) == WAITERS
    assert all(value["rounds"] == 1 for value in values)
    # The pool's own threads at most (old results are read from Postgres in batches there).
    assert peak <= baseline + EXECUTOR_THREADS, (baseline, peak)
    client.close()


def test_failure_and_timeout(redis_fleet: Fleet) -> None:
    """A FAILURE the real backend stored raises JobFailed; a job that never ends times out."""
    client = Client(redis_fleet.app())
    failed = client.handle(str(uuid.uuid4()), "cpu.checksum")
    never = client.handle(str(uuid.uuid4()), "cpu.checksum")
    client.app.backend.store_result(failed.id, ValueError("boom"), states.FAILURE)

    async def main() -> None:
        aclient = AsyncClient(client)
        with pytest.raises(JobFailed, match="ValueError: boom") as caught:
            await aclient.result(failed)
        assert caught.value.error_type == "ValueError"
        with pytest.raises(TimeoutError, match=f"job {never.id}"):
            await aclient.result(never, timeout=SHORT_TIMEOUT_S)
        await aclient.close()

    run(main(), ThreadPoolExecutor(max_workers=EXECUTOR_THREADS))
    client.close()


def test_an_old_result_only_postgres_holds(
    redis_fleet: Fleet, redis_client: redis.Redis, engine: Engine
) -> None:
    """Redis lost the key (expiry, restart): the wait reads Postgres, through the pool."""
    client = Client(redis_fleet.app())
    old = client.handle(str(uuid.uuid4()), "cpu.checksum")
    backend = client.app.backend
    backend.store_result(old.id, {"answer": 42}, states.SUCCESS)
    key = backend.get_key_for_task(old.id).decode()
    wait_for(lambda: fetch_result(engine, key), PERSIST_TIMEOUT_S, "the persister's copy")
    redis_client.delete(key)
    backend.l1.delete([key])  # this process's own cache of final results

    async def main() -> Any:
        aclient = AsyncClient(client)
        try:
            return await aclient.result(old)
        finally:
            await aclient.close()

    assert run(main(), ThreadPoolExecutor(max_workers=EXECUTOR_THREADS)) == {"answer": 42}
    client.close()
