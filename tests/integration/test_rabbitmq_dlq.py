"""Messages RabbitMQ dead-letters on its own show in ``taskfleet dlq`` and stay in the queue.

A job with a per-message TTL expires in a work queue no worker reads, and a plain kombu
consumer rejects messages without requeue: the queue's dead-letter exchange moves both to
``<queue>.dlq``, where only the broker knows about them.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
import redis
from kombu import Connection, Consumer, Producer

from taskfleet.config import Settings, load_settings
from taskfleet.resilience.broker_dlq import held_messages, letter_id
from taskfleet.resilience.deadletter import META_PREFIX, DeadLetter, store_amqp_metadata
from taskfleet.resilience.dlq import DeadLetterQueues, replay_id_for, select
from taskfleet.routing.depth import amqp_queue_depths
from taskfleet.routing.topology import Topology
from taskfleet.routing.wire import TaskMessage
from tests.support.waiting import wait_for

pytestmark = pytest.mark.rabbitmq

CLI = [sys.executable, "-m", "taskfleet.cli", "dlq"]
CLI_TIMEOUT_S = 60
DEAD_TIMEOUT_S = 30.0
TTL_S = 0.05
REJECTED = 3
DRAIN_S = 0.2


@pytest.fixture
def env(amqp_env: dict[str, str], redis_client: redis.Redis) -> Iterator[dict[str, str]]:
    """Queues of this test's own (declared, no worker), deleted afterwards."""
    suffix = uuid.uuid4().hex[:6]
    own = {
        **amqp_env,
        "TASKFLEET_CPU_QUEUE": f"cpu-bdlq-{suffix}",
        "TASKFLEET_IO_QUEUE": f"io-bdlq-{suffix}",
    }
    topology = Topology.from_settings(_settings(own))
    queues = [topology.work_queue(p) for p in ("cpu", "io")]
    queues += [topology.dead_letter_queue(p) for p in ("cpu", "io")]
    with Connection(own["TASKFLEET_BROKER_URL"]) as conn:
        for queue in queues:
            queue(conn.channel()).declare()
    yield own
    with Connection(own["TASKFLEET_BROKER_URL"]) as conn:
        channel = conn.channel()
        for queue in queues:
            channel.queue_delete(queue.name)
            redis_client.delete(META_PREFIX + queue.name)


def _settings(env: dict[str, str]) -> Settings:
    return load_settings(**{k.removeprefix("TASKFLEET_").lower(): v for k, v in env.items()})


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [*CLI, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _depth(env: dict[str, str], queue: str) -> int:
    with Connection(env["TASKFLEET_BROKER_URL"]) as conn:
        return amqp_queue_depths(conn, [queue])[queue]


def _publish_expiring_job(env: dict[str, str]) -> TaskMessage:
    """A ``cpu.noop`` job with a per-message TTL, on the CPU queue (no worker reads it)."""
    queue = env["TASKFLEET_CPU_QUEUE"]
    job = TaskMessage.build("cpu.noop", [1], {}, job_id=str(uuid.uuid4()), priority=5, queue=queue)
    with Connection(env["TASKFLEET_BROKER_URL"]) as conn:
        Producer(conn.channel()).publish(
            job.body,
            exchange=queue,
            routing_key=queue,
            headers=job.headers,
            content_type="application/json",
            content_encoding="utf-8",
            correlation_id=job.job_id,
            priority=job.priority,
            expiration=TTL_S,
        )
    return job


def _reject_plain_messages(env: dict[str, str], bodies: list[bytes]) -> None:
    """Publish non-taskfleet messages to the I/O queue; a plain consumer rejects them."""
    queue = Topology.from_settings(_settings(env)).work_queue("io")
    rejected: list[bytes] = []
    with Connection(env["TASKFLEET_BROKER_URL"]) as conn:
        producer = Producer(conn.channel())
        for body in bodies:
            producer.publish(body, exchange=queue.exchange, routing_key=queue.routing_key)

        def reject(body: object, message: object) -> None:
            message.reject(requeue=False)  # type: ignore[attr-defined]
            rejected.append(message.body)  # type: ignore[attr-defined]

        def all_rejected() -> bool:
            with contextlib.suppress(socket.timeout):
                conn.drain_events(timeout=DRAIN_S)
            return len(rejected) == len(bodies)

        with Consumer(conn.channel(), [queue], callbacks=[reject], accept=None):
            wait_for(all_rejected, DEAD_TIMEOUT_S, "the consumer to reject every message")


def _dlq_ids(env: dict[str, str], dlq: str) -> list[str]:
    """The ids in a DLQ, in queue order, read by browsing it as ``taskfleet dlq`` does."""
    with (
        Connection(env["TASKFLEET_BROKER_URL"]) as conn,
        held_messages(conn, dlq) as (_, messages, _),
    ):
        return [letter_id(m) for m in messages]


def test_expired_job_is_listed_and_stays(env: dict[str, str]) -> None:
    job = _publish_expiring_job(env)
    dlq = f"{env['TASKFLEET_CPU_QUEUE']}.dlq"
    wait_for(lambda: _depth(env, dlq) == 1, DEAD_TIMEOUT_S, "the expired job in the DLQ")

    lines = [x for x in _cli(env, "list").splitlines() if x.startswith(job.job_id)]
    assert len(lines) == 1
    assert lines[0].split()[1:5] == ["cpu.noop", env["TASKFLEET_CPU_QUEUE"], "broker", "expired"]
    shown = json.loads(_cli(env, "show", job.job_id))
    assert shown["origin"] == "broker"
    assert shown["reason"] == "expired"
    assert shown["queue"] == env["TASKFLEET_CPU_QUEUE"]
    assert shown["message"]["headers"]["task"] == "cpu.noop"
    assert shown["message"]["headers"]["x-death"][0]["reason"] == "expired"
    assert _dlq_ids(env, dlq) == [job.job_id]  # still there after list and show

    report = DeadLetterQueues(_settings(env)).replay(select(ids=[job.job_id]))
    assert report.replayed == {job.job_id: replay_id_for(job.job_id)}
    assert _depth(env, dlq) == 0
    assert _depth(env, env["TASKFLEET_CPU_QUEUE"]) == 1  # the replay, without its TTL


def test_rejected_messages_keep_their_order(env: dict[str, str], redis_client: redis.Redis) -> None:
    bodies = [f"not a job {n} {uuid.uuid4().hex}".encode() for n in range(REJECTED)]
    _reject_plain_messages(env, bodies)
    dlq = f"{env['TASKFLEET_IO_QUEUE']}.dlq"
    wait_for(lambda: _depth(env, dlq) == REJECTED, DEAD_TIMEOUT_S, "the rejected messages")
    order = _dlq_ids(env, dlq)
    assert len(set(order)) == REJECTED

    listed = {line.split()[0]: line.split() for line in _cli(env, "list").splitlines()}
    assert set(order) <= set(listed)
    assert all(
        listed[i][1:5] == ["-", env["TASKFLEET_IO_QUEUE"], "broker", "rejected"] for i in order
    )
    shown = json.loads(_cli(env, "show", order[1]))
    assert shown["origin"] == "broker"
    assert shown["attempts"] == 1
    assert _dlq_ids(env, dlq) == order  # nothing lost, nothing reordered

    # A worker's metadata for the same id wins: one entry, origin taskfleet.
    dlqs = DeadLetterQueues(_settings(env))
    mine = DeadLetter(
        id=order[0], kind="io.noop", queue=env["TASKFLEET_IO_QUEUE"], reason="malformed"
    )
    store_amqp_metadata(redis_client, dlq, mine, 600)
    merged = [x for x in dlqs.list() if x.id == order[0]]
    assert [(x.origin, x.reason) for x in merged] == [("taskfleet", "malformed")]

    assert dlqs.purge(select(ids=[order[2]])) == 1
    assert _dlq_ids(env, dlq) == order[:2]
    report = dlqs.replay(select(ids=[order[1]], origin="broker"))
    assert report.replayed == {order[1]: order[1]}  # republished unchanged: same id
    assert _dlq_ids(env, dlq) == order[:1]
    assert _depth(env, env["TASKFLEET_IO_QUEUE"]) == 1
