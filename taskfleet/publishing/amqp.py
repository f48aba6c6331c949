"""Publishing to RabbitMQ: reused connections, one AMQP transaction per chunk, short claims.

A publisher keeps its connections (each with one channel in transaction mode) between calls
and declares the fleet's queues once, on the first connection it opens (again only after a
connection failed): a single ``enqueue`` costs one publish and one commit round trip. An idle
connection the broker dropped is found on its first use; that chunk, not yet committed, is
sent again on a new connection, once.

RabbitMQ and the Redis that keeps idempotency claims cannot change together, so a keyed job
is claimed for a short window (:class:`taskfleet.claims.PendingClaims`), published, and its
claim confirmed for the full TTL once the transaction holding it has committed (see
:mod:`taskfleet.claims` for what a crash in between, or a concurrent duplicate, does).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import ClassVar

import redis
from kombu import Connection, Producer

from taskfleet.claims import PUSH_CHUNK, PendingClaims
from taskfleet.config.settings import AMQP_SCHEMES
from taskfleet.publishing.base import KEY_HEADER, PreparedJobs, PublisherConfig, extra_headers
from taskfleet.routing.wire import JSON_CONTENT_TYPE, TaskMessage

#: Messages per AMQP transaction (one commit round trip each).
TX_CHUNK = PUSH_CHUNK
#: Idle connections kept for the next calls; more (from concurrent calls) are closed.
MAX_IDLE_CONNECTIONS = 4
#: AMQP delivery mode of a persistent message.
PERSISTENT = 2


def task_messages(jobs: PreparedJobs, client_id: str | None) -> list[TaskMessage]:
    """The protocol-v2 messages of prepared jobs: Celery's headers, the bodies as encoded."""
    messages = []
    sent_at = time.time()
    for kind, job_id, body, priority, queue, key in jobs.rows():
        message = TaskMessage.build(
            kind,
            [],
            {},
            job_id=job_id,
            priority=priority,
            queue=queue,
            extra_headers=extra_headers(client_id, key, sent_at) | jobs.headers,
        )
        message.body = body
        messages.append(message)
    return messages


class _Link:
    """One broker connection, its channel in transaction mode, and a producer on it."""

    def __init__(self, url: str, declare: Callable[[object], None]) -> None:
        self.connection = Connection(url, transport_options={})
        try:
            self.channel = self.connection.channel()
            declare(self.channel)
            self.channel.tx_select()
            self.producer = Producer(self.channel)
        except BaseException:
            self.close()
            raise
        self.errors = self.connection.connection_errors + self.connection.channel_errors

    def send(self, chunk: Sequence[TaskMessage]) -> None:
        """Publish ``chunk`` in one transaction; returns once the broker holds all of it."""
        for m in chunk:
            self.producer.publish(
                m.body,
                exchange=m.queue,
                routing_key=m.queue,
                content_type=JSON_CONTENT_TYPE,
                content_encoding="utf-8",
                headers=m.headers,
                priority=m.priority,
                delivery_mode=PERSISTENT,
                correlation_id=m.job_id,
                reply_to="",
                retry=False,
            )
        self.channel.tx_commit()  # one round trip: the broker holds the whole chunk

    def close(self) -> None:
        """Close the connection, whatever state it is in."""
        with contextlib.suppress(Exception):
            self.connection.release()


class AmqpPublisher:
    """Publishes to RabbitMQ; idempotency claims in taskfleet's Redis. Thread-safe."""

    SCHEMES: ClassVar[frozenset[str]] = AMQP_SCHEMES

    def __init__(self, config: PublisherConfig) -> None:
        self.broker_url = config.broker_url
        self.topology = config.topology
        self.window_s = config.claim_window_s
        self.before_publish: Callable[[Sequence[str]], None] = config.before_publish
        self._redis = redis.Redis.from_url(config.redis_url)
        self.claims = PendingClaims(self._redis, config.claim_ttl_s)
        self._lock = threading.Lock()  # the idle list and the counters
        self._declare_lock = threading.Lock()
        self._declared = False
        self._idle: list[_Link] = []
        #: Connections this publisher opened so far (one, for sequential calls).
        self.connections_opened = 0

    def publish(self, jobs: PreparedJobs, client_id: str | None) -> list[bool]:
        """Claim keyed jobs for ``window_s``, publish the new ones, confirm their claims.

        See :meth:`taskfleet.publishing.base.Publisher.publish`.
        """
        fresh, token = self.claims.claim(
            [
                (job_id, kind, key is not None)
                for job_id, kind, key in zip(jobs.job_ids, jobs.kinds, jobs.keys, strict=True)
            ],
            self.window_s,
        )
        messages = task_messages(jobs, client_id)
        to_send = [m for m, new in zip(messages, fresh, strict=True) if new]
        if not to_send:
            return fresh
        unconfirmed = {m.job_id for m in to_send if KEY_HEADER in m.headers}

        def committed(chunk: Sequence[TaskMessage]) -> None:
            keyed = [(m.job_id, m.kind) for m in chunk if m.job_id in unconfirmed]
            self.claims.confirm(keyed)
            unconfirmed.difference_update(job_id for job_id, _ in keyed)

        self.before_publish([m.job_id for m in to_send])
        try:
            self._send(to_send, committed)
        except BaseException:
            # Not published: free this call's claims so a retry really sends the jobs.
            self.claims.release(sorted(unconfirmed), token)
            raise
        return fresh

    def _send(
        self, messages: Sequence[TaskMessage], committed: Callable[[Sequence[TaskMessage]], None]
    ) -> None:
        """One transaction per :data:`TX_CHUNK` messages; ``committed`` gets each chunk once
        the broker holds it."""
        link, reused = self._acquire()
        try:
            for start in range(0, len(messages), TX_CHUNK):
                chunk = messages[start : start + TX_CHUNK]
                try:
                    link.send(chunk)
                except link.errors:
                    if not reused:
                        raise
                    # An idle connection the broker dropped: nothing of this call is
                    # committed yet, so send on a new one (which declares the queues again).
                    link.close()
                    self._declared = False
                    link, reused = self._open(), False
                    link.send(chunk)
                reused = False
                committed(chunk)
        except BaseException:
            link.close()
            self._declared = False
            raise
        self._release(link)

    def _declare(self, channel: object) -> None:
        """Declare every queue (and its exchange and dead-letter queue), once per client."""
        with self._declare_lock:
            if not self._declared:
                for queue in self.topology.all_queues():
                    queue(channel).declare()
                self._declared = True

    def _open(self) -> _Link:
        link = _Link(self.broker_url, self._declare)
        with self._lock:
            self.connections_opened += 1
        return link

    def _acquire(self) -> tuple[_Link, bool]:
        """An idle connection (True: reused) or a new one."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._open(), False

    def _release(self, link: _Link) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE_CONNECTIONS:
                self._idle.append(link)
                return
        link.close()

    def close(self) -> None:
        """Close the idle connections and the claims' Redis connection."""
        with self._lock:
            idle, self._idle = self._idle, []
        for link in idle:
            link.close()
        self._redis.close()
