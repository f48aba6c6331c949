"""RabbitMQ publishing reuses its connection and declares the queues once per client."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import amqp
import pytest
from kombu import Connection, Queue

from taskfleet.app import create_app
from taskfleet.client import Client
from taskfleet.config import load_settings
from taskfleet.publishing.amqp import AmqpPublisher
from taskfleet.routing.depth import amqp_queue_depths
from tests.support.services import delete_amqp_queues

pytestmark = pytest.mark.rabbitmq

CALLS = 50


@pytest.fixture
def amqp_client(amqp_env: dict[str, str]) -> Iterator[Client]:
    """A client on RabbitMQ queues of its own that no worker consumes."""
    suffix = f"pub-{uuid.uuid4().hex[:6]}"
    env = {
        **amqp_env,
        "TASKFLEET_CPU_QUEUE": f"{amqp_env['TASKFLEET_CPU_QUEUE']}-{suffix}",
        "TASKFLEET_IO_QUEUE": f"{amqp_env['TASKFLEET_IO_QUEUE']}-{suffix}",
    }
    overrides = {k.removeprefix("TASKFLEET_").lower(): v for k, v in env.items()}
    client = Client(create_app(load_settings(**overrides)))
    yield client
    client.close()
    delete_amqp_queues(env)


def _depth(client: Client) -> int:
    with Connection(client.urls.broker_url) as conn:
        queue = client.topology.cpu_queue
        return int(amqp_queue_depths(conn, [queue])[queue])


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """AMQP connections opened and queues declared by this thread, counted in the libraries."""
    counts = {"connections": 0, "declares": 0}
    caller = threading.get_ident()
    connect, declare = amqp.Connection.connect, Queue.declare

    def counting_connect(self: amqp.Connection, *args: Any, **kwargs: Any) -> Any:
        counts["connections"] += threading.get_ident() == caller
        return connect(self, *args, **kwargs)

    def counting_declare(self: Queue, *args: Any, **kwargs: Any) -> Any:
        counts["declares"] += threading.get_ident() == caller
        return declare(self, *args, **kwargs)

    monkeypatch.setattr(amqp.Connection, "connect", counting_connect)
    monkeypatch.setattr(Queue, "declare", counting_declare)
    return counts


def test_fifty_enqueues_open_one_connection(amqp_client: Client, counted: dict[str, int]) -> None:
    handles = [amqp_client.enqueue("cpu.noop", n) for n in range(CALLS)]
    handles += amqp_client.enqueue_many([("cpu.noop", n) for n in range(CALLS)])
    assert counted == {"connections": 1, "declares": len(amqp_client.topology.all_queues())}
    publisher = amqp_client.publisher
    assert isinstance(publisher, AmqpPublisher)
    assert publisher.connections_opened == 1
    assert len({h.id for h in handles}) == 2 * CALLS
    assert _depth(amqp_client) == 2 * CALLS


def test_a_dropped_idle_connection_is_replaced(
    amqp_client: Client, counted: dict[str, int]
) -> None:
    """The broker (or a network) closed the idle connection: the next call still publishes."""
    amqp_client.enqueue("cpu.noop", 0)
    publisher = amqp_client.publisher
    assert isinstance(publisher, AmqpPublisher)
    for link in publisher._idle:  # cut the TCP connection under the idle link
        link.connection.connection.sock.shutdown(socket.SHUT_RDWR)
    amqp_client.enqueue("cpu.noop", 1)
    assert publisher.connections_opened == counted["connections"] == 2
    assert _depth(amqp_client) == 2
