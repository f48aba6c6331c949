"""Flower's Broker page on RabbitMQ without the management plugin: depths read over AMQP.

Stock Flower reads RabbitMQ queues from the management HTTP API only (``flower.utils.broker
.RabbitMQ``: ``http://guest:guest@<host>:15672/api/`` unless ``--broker-api`` names another),
so with the plugin off the page is empty. :class:`AmqpQueues` reads the same queues over
AMQP itself, as :mod:`taskfleet.routing.amqp_groups` does: one passive ``queue.declare`` per queue, whose reply carries the queue's ready messages and its
consumers. :func:`patch_flower` makes Flower use it when the broker is AMQP and no
``--broker-api`` is given; with ``--broker-api`` Flower's own management-API client stays.

Rows have the management API's shape (``name``, ``messages``, ``messages_ready``,
``consumers``, ``messages_unacknowledged``), which Flower's ``broker.html`` and
``/api/queues/length`` show. AMQP cannot tell what the API can: unacknowledged (delivered,
running) messages, so ``messages_unacknowledged`` is None (the page shows a dash) and
``messages`` counts the ready messages only (the API's ``messages`` is ready + unacked);
nor idle time, rates or memory. A priority queue is one queue, so the depth is already every
priority's sum. A queue that does not exist (passive declare: 404 NOT_FOUND) is left out,
as the management API leaves it out: declaring it would create it.

The kombu calls block, so they run in a thread (``asyncio.to_thread``) on a connection of
their own (the app's URL, TLS and login), opened per page load (Flower builds a new broker
client per request, too) and bounded by :data:`CONNECT_TIMEOUT_S` and :data:`READ_TIMEOUT_S`
(the wait and the socket's, so the thread ends too); Flower's tornado loop never waits on
RabbitMQ. A failed or late reading logs an error and shows no rows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any, Final, TypedDict

logger = logging.getLogger(__name__)

#: How long opening the AMQP connection may take (one attempt, no retry).
CONNECT_TIMEOUT_S: Final = 2.0
#: How long a whole reading (connect + one declare per queue) may take before the page gives up.
READ_TIMEOUT_S: Final = 3.0


class QueueRow(TypedDict):
    """One queue as RabbitMQ's management API describes it (the fields AMQP can fill)."""

    name: str
    messages: int
    messages_ready: int
    consumers: int
    messages_unacknowledged: None


def queue_row(name: str, ready: int, consumers: int) -> QueueRow:
    """The row of a queue with ``ready`` messages and ``consumers`` (unacked: unknown)."""
    return {
        "name": name,
        "messages": ready,
        "messages_ready": ready,
        "consumers": consumers,
        "messages_unacknowledged": None,
    }


def read_queues(connection: Any, names: Iterable[str]) -> list[QueueRow]:
    """Rows of the queues in ``names`` that exist, by passive declares (blocking).

    ``connection`` is a kombu ``Connection``, not yet connected; it is released here.
    """
    with connection:
        connection.ensure_connection(max_retries=0)
        channel = connection.channel()
        rows = []
        for name in names:
            try:
                _, ready, consumers = channel.queue_declare(queue=name, passive=True)
            except connection.channel_errors:  # 404: no such queue; the channel is closed
                channel = connection.channel()
                continue
            rows.append(queue_row(name, int(ready), int(consumers)))
        return rows


class AmqpQueues:
    """Flower's broker client (its ``queues`` coroutine) reading depths over AMQP."""

    def __init__(self, connect: Callable[[], Any], timeout: float = READ_TIMEOUT_S) -> None:
        """``connect`` returns a new, unconnected kombu ``Connection`` to the broker."""
        self.connect = connect
        self.timeout = timeout

    async def queues(self, names: Iterable[str]) -> list[QueueRow]:
        """Rows of the existing queues in ``names``; none if RabbitMQ fails or is slow."""
        from amqp.exceptions import AMQPError
        from kombu.exceptions import KombuError

        reading = asyncio.to_thread(read_queues, self.connect(), list(names))
        try:
            return await asyncio.wait_for(reading, self.timeout)
        except (TimeoutError, OSError, KombuError, AMQPError) as exc:
            logger.error("Reading RabbitMQ queue depths over AMQP failed: %r", exc)
            return []


def patch_flower() -> None:
    """Flower's handlers get :class:`AmqpQueues` on an AMQP broker without ``--broker-api``."""
    from flower.views import BaseHandler

    stock_get_broker = BaseHandler.get_broker

    def get_broker(self: Any) -> Any:
        app = self.application
        if app.transport != "amqp" or app.options.broker_api:
            return stock_get_broker(self)
        return AmqpQueues(lambda: reading_connection(self.capp))

    BaseHandler.get_broker = get_broker


def reading_connection(capp: Any) -> Any:
    """A new connection of the Celery app's (its URL, TLS, login), with short timeouts.

    The socket timeouts end the reading thread too (``asyncio.wait_for`` only stops waiting
    for it), so a broker that stops answering cannot hold one of the loop's threads.
    """
    timeouts = {"read_timeout": READ_TIMEOUT_S, "write_timeout": READ_TIMEOUT_S}
    return capp.connection_for_read(connect_timeout=CONNECT_TIMEOUT_S, transport_options=timeouts)
