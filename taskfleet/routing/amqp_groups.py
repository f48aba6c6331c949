"""Worker-group readings on RabbitMQ, from the broker itself.

On Redis a group's health comes from the heartbeat sidecars' consumer records and the
queue's sub-lists (:class:`taskfleet.routing.groups.GroupRouter`). On RabbitMQ the broker
knows both numbers: a passive ``queue.declare`` answers each group queue's ready messages and
its consumers. A consumer is a worker's open channel, so it disappears the moment the
worker's connection closes (a crash, a kill, or missed AMQP heartbeats): that is the
liveness signal, with no TTL of taskfleet's own.

What RabbitMQ's AMQP interface does not give is the age of a queue's oldest message, so the
age bound (``TASKFLEET_GROUP_MAX_AGE``) is not applied on RabbitMQ: a group fails over when
it has no consumer, not when it is only slow. A group queue never declared (no worker of that
group ever started) reads as empty with no consumer.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from taskfleet.routing.group_reading import GroupReading

#: How long a reading may wait for RabbitMQ before the router keeps its last one.
CONNECT_TIMEOUT_S = 2.0


class AmqpGroupReader:
    """Reads ``(ready messages, age 0, consumers)`` of group queues with passive declares.

    One connection and channel, opened on first use and again after a failure; thread-safe
    (one reading at a time). Connection errors propagate: the router keeps its last reading.
    """

    def __init__(self, broker_url: str) -> None:
        from kombu import Connection

        self.connection = Connection(broker_url, connect_timeout=CONNECT_TIMEOUT_S)
        #: What a failed reading raises (the router catches these).
        self.errors: tuple[type[BaseException], ...] = (
            *self.connection.connection_errors,
            *self.connection.channel_errors,
        )
        self._channel: Any = None
        self._lock = threading.Lock()

    def _open(self) -> Any:
        if self._channel is None:
            self.connection.ensure_connection(max_retries=1)
            self._channel = self.connection.channel()
        return self._channel

    def __call__(self, names: Sequence[str]) -> dict[str, GroupReading]:
        """A reading of every queue in ``names``."""
        with self._lock:
            try:
                return {name: self._read_one(name) for name in names}
            except self.connection.connection_errors:
                self.close()
                raise

    def _read_one(self, name: str) -> GroupReading:
        channel = self._open()
        try:
            _, ready, consumers = channel.queue_declare(queue=name, passive=True)
        except self.connection.channel_errors:  # 404: never declared; the channel is closed
            self._channel = None
            return GroupReading(0, 0.0, 0)
        return GroupReading(int(ready), 0.0, int(consumers))

    def close(self) -> None:
        """Drop the connection (the next reading opens a new one)."""
        self._channel = None
        self.connection.release()
