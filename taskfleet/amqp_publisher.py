"""Publishing jobs to RabbitMQ: one AMQP transaction per chunk, keyed jobs claimed briefly.

RabbitMQ and the Redis that keeps idempotency claims cannot change together, so a keyed job
is claimed for a short window (:class:`taskfleet.claims.PendingClaims`), published, and its
claim confirmed for the full TTL once the transaction holding it has committed (see
:mod:`taskfleet.claims` for what a crash in between, or a concurrent duplicate, does).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from kombu import Connection, Producer

from taskfleet.claims import PUSH_CHUNK, PendingClaims
from taskfleet.routing.topology import Topology
from taskfleet.routing.wire import TaskMessage

#: Messages per AMQP transaction (one commit round trip each).
TX_CHUNK = PUSH_CHUNK
KEY_HEADER = "taskfleet_idempotency_key"


class AmqpPublisher:
    """Publishes taskfleet messages to RabbitMQ. Thread-safe."""

    def __init__(self, broker_url: str, topology: Topology, claims: PendingClaims) -> None:
        self.broker_url = broker_url
        self.topology = topology
        self.claims = claims
        self._lock = threading.Lock()
        self._connection: Connection | None = None

    def send(
        self,
        messages: Sequence[TaskMessage],
        window_s: float,
        before_publish: Callable[[Sequence[str]], None],
    ) -> list[bool]:
        """Claim keyed jobs for ``window_s``, publish the new ones, confirm their claims.

        Args:
            messages: The jobs, in order.
            window_s: How long a claim lives unconfirmed.
            before_publish: Called with the ids about to be published, after the claims.

        Returns:
            Per job, whether it was published (False: already enqueued by another call).
        """
        fresh, token = self.claims.claim(
            [(m.job_id, m.kind, KEY_HEADER in m.headers) for m in messages], window_s
        )
        to_send = [m for m, new in zip(messages, fresh, strict=True) if new]
        if not to_send:
            return fresh
        unconfirmed = {m.job_id for m in to_send if KEY_HEADER in m.headers}

        def committed(chunk: Sequence[TaskMessage]) -> None:
            keyed = [(m.job_id, m.kind) for m in chunk if m.job_id in unconfirmed]
            self.claims.confirm(keyed)
            unconfirmed.difference_update(job_id for job_id, _ in keyed)

        before_publish([m.job_id for m in to_send])
        try:
            self.publish(to_send, committed)
        except BaseException:
            # Not published: free this call's claims so a retry really sends the jobs.
            self.claims.release(sorted(unconfirmed), token)
            raise
        return fresh

    def publish(
        self, messages: Sequence[TaskMessage], committed: Callable[[Sequence[TaskMessage]], None]
    ) -> None:
        """One transaction per :data:`TX_CHUNK` messages; ``committed`` gets each chunk once
        the broker holds it."""
        with self._lock:
            if self._connection is None:
                self._connection = Connection(self.broker_url, transport_options={})
            conn = self._connection.clone()
        with conn:
            channel = conn.channel()
            for queue in self.topology.all_queues():
                queue(channel).declare()
            producer = Producer(channel)
            for start in range(0, len(messages), TX_CHUNK):
                chunk = messages[start : start + TX_CHUNK]
                channel.tx_select()
                for m in chunk:
                    producer.publish(
                        m.body,
                        exchange=m.queue,
                        routing_key=m.queue,
                        content_type="application/json",
                        content_encoding="utf-8",
                        headers=m.headers,
                        priority=m.priority,
                        delivery_mode=2,
                        correlation_id=m.job_id,
                        reply_to="",
                        retry=False,
                    )
                channel.tx_commit()  # one round trip: the broker holds the whole chunk
                committed(chunk)

    def close(self) -> None:
        """Release the connection."""
        if self._connection is not None:
            self._connection.release()
