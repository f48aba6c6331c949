"""A batch from ``enqueue_many`` reads, worker-side, exactly as the per-job messages did.

The Redis lists are read back raw (which sub-list, what order, what envelope), then drained by
kombu's Redis transport and parsed by Celery's worker ``Request``, as a stock worker would.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import redis
from celery.worker.request import Request
from kombu import Connection, Consumer, Message

from taskfleet.app import create_app
from taskfleet.client import Client, JobSpec, PayloadError
from taskfleet.config import load_settings
from taskfleet.routing import PriorityError, UnknownJobKind
from taskfleet.routing.depth import redis_priority_key, redis_priority_keys
from taskfleet.routing.transport import TRANSPORT_PATH
from taskfleet.routing.wire import SENT_AT_HEADER, TaskMessage
from tests.support.waiting import wait_for

PRIORITIES = (0, 2, 5, 9)
PER_PRIORITY = 6
CLIENT_ID = "wire-test"
DRAIN_TIMEOUT_S = 30.0
MAX_PAYLOAD_BYTES = 4096


@pytest.fixture
def client(redis_env: dict[str, str], redis_client: redis.Redis) -> Iterator[Client]:
    """A client on queues of its own that no worker consumes."""
    settings = load_settings(
        broker_url=redis_env["TASKFLEET_BROKER_URL"],
        redis_url=redis_env["TASKFLEET_REDIS_URL"],
        database_url=redis_env["TASKFLEET_DATABASE_URL"],
        cpu_queue=f"{redis_env['TASKFLEET_CPU_QUEUE']}-wire",
        io_queue=f"{redis_env['TASKFLEET_IO_QUEUE']}-wire",
        max_payload_bytes=MAX_PAYLOAD_BYTES,
    )
    client = Client(create_app(settings))
    yield client
    for queue in (settings.cpu_queue, settings.io_queue):
        redis_client.delete(*redis_priority_keys(queue))
    client.close()


def _specs() -> list[JobSpec]:
    """Priorities interleaved, so FIFO within one priority is not just batch order by luck."""
    specs = [
        JobSpec("cpu.noop", {"priority": p, "n": n}, priority=p)
        for n in range(PER_PRIORITY)
        for p in PRIORITIES
    ]
    key = f"wire-{uuid.uuid4().hex}"  # idempotency markers outlive the test: a fresh key
    specs.append(JobSpec("cpu.noop", {"keyed": True}, priority=5, idempotency_key=key))
    return specs


def _expected(
    client: Client, specs: list[JobSpec], ids: list[str], client_id: str | None = CLIENT_ID
) -> dict[str, dict[str, Any]]:
    """The envelope the per-job builder (``_message`` + ``redis_envelope``) makes, by id."""
    expected = {}
    for spec, job_id in zip(specs, ids, strict=True):
        headers: dict[str, Any] = {} if client_id is None else {"taskfleet_client_id": client_id}
        if spec.idempotency_key is not None:
            headers["taskfleet_idempotency_key"] = spec.idempotency_key
        message = TaskMessage.build(
            spec.kind,
            [spec.payload],
            {},
            job_id=job_id,
            priority=int(spec.priority or 0),
            queue=client.topology.cpu_queue,
            extra_headers=headers,
        )
        expected[job_id] = _without_tag(message.redis_envelope())
    return expected


def _without_tag(raw: bytes | str) -> dict[str, Any]:
    """The envelope less what differs per publish: the delivery tag and the publish time."""
    envelope: dict[str, Any] = json.loads(raw)
    envelope["properties"].pop("delivery_tag")
    envelope["headers"].pop(SENT_AT_HEADER, None)
    return envelope


def test_batch_lists_hold_per_job_envelopes_in_fifo_order(
    client: Client, redis_client: redis.Redis
) -> None:
    specs = _specs()
    handles = client.enqueue_many(specs, client_id=CLIENT_ID)
    ids = [h.id for h in handles]
    expected = _expected(client, specs, ids)
    queue = client.topology.cpu_queue
    for priority in PRIORITIES:
        # kombu pops with BRPOP: the consumption order is the list read from its tail.
        raw = list(reversed(redis_client.lrange(redis_priority_key(queue, priority), 0, -1)))
        envelopes = [json.loads(item) for item in raw]
        got_ids = [e["headers"]["id"] for e in envelopes]
        want_ids = [i for i, s in zip(ids, specs, strict=True) if s.priority == priority]
        assert got_ids == want_ids, f"priority {priority}: not FIFO"
        for item, envelope in zip(raw, envelopes, strict=True):
            assert _without_tag(item) == expected[envelope["headers"]["id"]]
            assert isinstance(envelope["headers"][SENT_AT_HEADER], float)  # stamped
    tags = [
        json.loads(item)["properties"]["delivery_tag"]
        for key in redis_priority_keys(queue)
        for item in redis_client.lrange(key, 0, -1)
    ]
    assert len(tags) == len(specs)
    assert len(set(tags)) == len(tags)


@pytest.mark.parametrize("client_id", [CLIENT_ID, None], ids=["client-id", "no-client-id"])
def test_enqueue_one_at_a_time_sends_the_same_envelopes(
    client: Client, redis_client: redis.Redis, client_id: str | None
) -> None:
    # ``enqueue`` builds each message on its own; it must match what a batch sends, with and
    # without a client id, across alternating priorities.
    specs = _specs()
    ids = [
        client.enqueue(
            s.kind, s.payload, priority=s.priority, idempotency_key=s.idempotency_key,
            client_id=client_id,
        ).id
        for s in specs
    ]  # fmt: skip
    expected = _expected(client, specs, ids, client_id)
    queue = client.topology.cpu_queue
    got = {}
    for priority in PRIORITIES:
        for raw in reversed(redis_client.lrange(redis_priority_key(queue, priority), 0, -1)):
            got[json.loads(raw)["headers"]["id"]] = _without_tag(raw)
    assert got == expected


@pytest.mark.parametrize("transport", ["redis", TRANSPORT_PATH], ids=["kombu", "taskfleet"])
def test_worker_side_decode_of_a_batch(client: Client, transport: str) -> None:
    """Stock kombu's Redis transport (with the fleet's priority steps) and taskfleet's."""
    specs = _specs()
    handles = client.enqueue_many(specs, client_id=CLIENT_ID)
    app = client.app
    received: list[Message] = []
    url = app.conf.broker_url
    options = app.conf.broker_transport_options
    with Connection(url, transport=transport, transport_options=options) as conn:
        work_queue = client.topology.work_queue("cpu")
        with Consumer(conn, [work_queue], callbacks=[lambda _, m: received.append(m)]):

            def drained() -> bool:
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=1)
                return len(received) >= len(specs)

            wait_for(drained, DRAIN_TIMEOUT_S, f"{len(specs)} messages from kombu")
            for message in received:
                message.ack()
    requests = [Request(m, app=app) for m in received]
    by_id = {r.id: (r, m) for r, m in zip(requests, received, strict=True)}
    assert set(by_id) == {h.id for h in handles}
    for spec, handle in zip(specs, handles, strict=True):
        request, message = by_id[handle.id]
        assert request.task_name == spec.kind
        assert request.args == [spec.payload]
        assert request.kwargs == {}
        assert message.properties["priority"] == spec.priority
        assert message.headers["taskfleet_client_id"] == CLIENT_ID
        assert message.headers.get("taskfleet_idempotency_key") == spec.idempotency_key
    for priority in PRIORITIES:
        order = [r.args[0]["n"] for r in requests if r.args[0].get("priority") == priority]
        assert order == list(range(PER_PRIORITY)), f"priority {priority} consumed out of order"


def test_idempotency_key_in_a_batch_publishes_once(
    client: Client, redis_client: redis.Redis
) -> None:
    key = f"wire-dup-{uuid.uuid4().hex}"
    keyed = [JobSpec("cpu.noop", {"n": n}, idempotency_key=key) for n in range(3)]
    first = client.enqueue_many([("cpu.noop", 1), *keyed])
    again = client.enqueue_many(keyed[:1])
    assert [h.deduplicated for h in first] == [False, False, True, True]
    assert again[0].deduplicated
    assert first[1].id == first[2].id == again[0].id
    depths = [redis_client.llen(k) for k in redis_priority_keys(client.topology.cpu_queue)]
    assert sum(depths) == 2


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (JobSpec("cpu.noop", {"at": datetime(2026, 1, 1)}), PayloadError, "datetime"),
        (
            JobSpec("cpu.noop", {"blob": "x" * MAX_PAYLOAD_BYTES}),
            PayloadError,
            "TASKFLEET_MAX_PAYLOAD_BYTES",
        ),
        (JobSpec("cpu.nope", 1), UnknownJobKind, "cpu.nope"),
        (JobSpec("cpu.noop", 1, priority=10), PriorityError, "between 0 and 9"),
    ],
    ids=["datetime", "oversize", "unknown-kind", "priority"],
)
def test_a_bad_job_anywhere_in_a_batch_sends_nothing(
    client: Client, redis_client: redis.Redis, bad: JobSpec, error: type[Exception], match: str
) -> None:
    jobs: list[Any] = [("cpu.noop", {"n": n, "big": 2**70}) for n in range(5)]
    with pytest.raises(error, match=match):
        client.enqueue_many([*jobs, bad, *jobs])
    assert sum(redis_client.llen(k) for k in redis_priority_keys(client.topology.cpu_queue)) == 0
    handles = client.enqueue_many(jobs)  # big ints fall back to json and still go out
    assert len(handles) == 5
