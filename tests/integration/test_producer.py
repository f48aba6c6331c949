"""Producer API: bad input is refused before anything is sent; batches use few round trips."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis
from redis.connection import AbstractConnection

from taskfleet.app import create_app
from taskfleet.async_client import AsyncClient
from taskfleet.client import Client, JobSpec, PayloadError
from taskfleet.config import load_settings
from taskfleet.routing import PriorityError, UnknownJobKind
from taskfleet.routing.depth import redis_queue_depths

BATCH = 10_000


@pytest.fixture
def idle_client(redis_env: dict[str, str], redis_client: redis.Redis) -> Client:
    """A client publishing to queues no worker consumes (this test owns them)."""
    settings = load_settings(
        broker_url=redis_env["TASKFLEET_BROKER_URL"],
        redis_url=redis_env["TASKFLEET_REDIS_URL"],
        database_url=redis_env["TASKFLEET_DATABASE_URL"],
        cpu_queue=f"{redis_env['TASKFLEET_CPU_QUEUE']}-idle",
        io_queue=f"{redis_env['TASKFLEET_IO_QUEUE']}-idle",
        max_payload_bytes=4096,
    )
    client = Client(create_app(settings))
    yield client
    from taskfleet.routing.depth import redis_priority_keys

    for queue in (settings.cpu_queue, settings.io_queue):
        redis_client.delete(*redis_priority_keys(queue))
    client.close()


def _depth(client: Client, redis_client: redis.Redis) -> int:
    queues = [client.topology.cpu_queue, client.topology.io_queue]
    return sum(redis_queue_depths(redis_client, queues).values())


def test_unknown_kind_is_named(idle_client: Client, redis_client: redis.Redis) -> None:
    with pytest.raises(UnknownJobKind, match=r"'cpu\.nope'"):
        idle_client.enqueue("cpu.nope", {})
    assert _depth(idle_client, redis_client) == 0


def test_payload_that_is_not_json_is_refused(
    idle_client: Client, redis_client: redis.Redis
) -> None:
    with pytest.raises(PayloadError, match="not JSON-serialisable"):
        idle_client.enqueue("cpu.checksum", {"when": object()})
    assert _depth(idle_client, redis_client) == 0


def test_oversize_payload_names_the_limit(idle_client: Client, redis_client: redis.Redis) -> None:
    with pytest.raises(PayloadError, match=r"4096-byte limit.*TASKFLEET_MAX_PAYLOAD_BYTES"):
        idle_client.enqueue("cpu.checksum", {"blob": "x" * 5000})
    assert _depth(idle_client, redis_client) == 0


def test_priority_out_of_range(idle_client: Client) -> None:
    with pytest.raises(PriorityError, match="between 0 and 9"):
        idle_client.enqueue("cpu.noop", None, priority=10)


def test_one_bad_job_in_a_batch_sends_none(idle_client: Client, redis_client: redis.Redis) -> None:
    jobs = [JobSpec("cpu.noop", i) for i in range(50)] + [JobSpec("cpu.noop", {"x": {1, 2}})]
    with pytest.raises(PayloadError):
        idle_client.enqueue_many(jobs)
    assert _depth(idle_client, redis_client) == 0


def test_enqueue_many_uses_few_round_trips(
    idle_client: Client, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """10,000 jobs: count the requests the client sent (each waits for its replies once).

    Not the server's read events: how many reads a request takes depends on how fast the
    server drains its socket against how fast the client fills it, and other clients add
    theirs for as long as the batch takes.
    """
    payload = {"doc": "x" * 180}
    caller = threading.get_ident()
    requests = 0
    send = AbstractConnection.send_packed_command

    def counted(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        nonlocal requests
        if threading.get_ident() == caller:  # not another test's background thread
            requests += 1
        send(self, command, check_health)

    with monkeypatch.context() as patched:
        patched.setattr(AbstractConnection, "send_packed_command", counted)
        handles = idle_client.enqueue_many([("cpu.noop", payload)] * BATCH, priority="low")
    assert len(handles) == BATCH
    assert _depth(idle_client, redis_client) == BATCH
    # Connecting adds a few handshake commands; one request per job would be 10,000.
    assert requests < BATCH / 100, f"{requests} requests for {BATCH} jobs"


def test_async_client(idle_client: Client, redis_client: redis.Redis) -> None:
    import asyncio

    async def main() -> list[str]:
        aclient = AsyncClient(idle_client)
        one = await aclient.enqueue("cpu.noop", 1, priority="critical")
        many = await aclient.enqueue_many([("io.noop", i) for i in range(20)])
        await aclient.close()
        return [one.id, *(h.id for h in many)]

    ids = asyncio.run(main())
    assert len(set(ids)) == 21
    assert _depth(idle_client, redis_client) == 21
