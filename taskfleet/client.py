"""Producer API: enqueue jobs, one or many, and read their results.

``enqueue`` and ``enqueue_many`` publish the exact messages Celery would (protocol v2, JSON),
so any Celery worker understands them and any Celery client reads their results. On Redis a
batch is one pipeline of multi-value LPUSHes (one per priority sub-list and ``BATCH_CHUNK``
jobs), its envelopes rendered from templates; on RabbitMQ one transaction per chunk.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis
from celery import Celery
from kombu import Connection, Producer

from taskfleet.async_client import AsyncClient
from taskfleet.config import resolve_services
from taskfleet.handles import (
    DEFAULT_RESULT_TIMEOUT_S,
    JobFailed,
    JobHandle,
    JobSpec,
    PayloadError,
    as_spec,
)
from taskfleet.routing.depth import redis_priority_key
from taskfleet.routing.priority import Priority, parse_priority
from taskfleet.routing.topology import Topology, UnknownJobKind
from taskfleet.routing.wire import (
    EnvelopeTemplate,
    TaskMessage,
    encode_single_arg_body,
    job_id_for,
    new_job_ids,
)

BATCH_CHUNK = 1000
IDEMPOTENCY_PREFIX = "taskfleet:idem:"


class Client:
    """Publishes jobs to a taskfleet fleet. Thread-safe; reuse one per process."""

    def __init__(self, app: Celery | None = None) -> None:
        if app is None:
            from taskfleet.app import app as default_app

            app = default_app
        from taskfleet.app import settings_of
        from taskfleet.tasks.base import JOB_POOLS

        self.app = app
        self.settings = settings_of(app)
        self.topology = Topology.from_settings(self.settings)
        self._pools = JOB_POOLS
        self._urls = resolve_services(self.settings)
        self._redis = redis.Redis.from_url(self._urls.redis_url)
        self._broker_redis = (
            redis.Redis.from_url(self._urls.broker_url) if self.settings.broker_is_redis else None
        )
        self._amqp_lock = threading.Lock()
        self._amqp: Connection | None = None

    # -- building -------------------------------------------------------------------------
    def _queue_of(self, kind: str) -> str:
        """The work queue of a job kind.

        Raises:
            UnknownJobKind: no task of that kind is registered.
        """
        pool = self._pools.get(kind)
        if pool is None:
            known = ", ".join(sorted(self._pools))
            raise UnknownJobKind(f"unknown job kind {kind!r}; known kinds: {known}")
        return self.topology.queue_for_pool(pool)

    def _message(
        self,
        kind: str,
        payload: Any,
        priority: Priority | None,
        idempotency_key: str | None,
        client_id: str | None,
    ) -> TaskMessage:
        queue = self._queue_of(kind)
        level = parse_priority(priority)
        headers: dict[str, Any] = {}
        if client_id is not None:
            headers["taskfleet_client_id"] = client_id
        if idempotency_key is not None:
            headers["taskfleet_idempotency_key"] = idempotency_key
        try:
            message = TaskMessage.build(
                kind,
                [payload],
                {},
                job_id=job_id_for(kind, idempotency_key),
                priority=level,
                queue=queue,
                extra_headers=headers,
            )
        except (TypeError, ValueError) as exc:
            raise PayloadError(f"payload for {kind!r} is not JSON-serialisable: {exc}") from None
        if len(message.body) > self.settings.max_payload_bytes:
            raise PayloadError(
                f"payload for {kind!r} is {len(message.body)} bytes, over the "
                f"{self.settings.max_payload_bytes}-byte limit (TASKFLEET_MAX_PAYLOAD_BYTES)"
            )
        return message

    def _body(self, kind: str, payload: Any) -> bytes:
        """The JSON body of a job with ``payload`` as its one argument, validated."""
        try:
            body = encode_single_arg_body(payload)
        except (TypeError, ValueError) as exc:
            raise PayloadError(f"payload for {kind!r} is not JSON-serialisable: {exc}") from None
        if len(body) > self.settings.max_payload_bytes:
            raise PayloadError(
                f"payload for {kind!r} is {len(body)} bytes, over the "
                f"{self.settings.max_payload_bytes}-byte limit (TASKFLEET_MAX_PAYLOAD_BYTES)"
            )
        return body

    # -- idempotency ----------------------------------------------------------------------
    def _claim(self, messages: Sequence[TaskMessage]) -> list[bool]:
        """SET NX one marker per keyed job; False for a job already enqueued before."""
        return self._claim_jobs(
            [(m.job_id, m.kind, "taskfleet_idempotency_key" in m.headers) for m in messages]
        )

    def _claim_jobs(self, jobs: Sequence[tuple[str, str, bool]]) -> list[bool]:
        """SET NX one marker per (job id, kind, keyed) whose keyed is true; per job, whether it
        is new (unkeyed jobs always are; of the same key twice, only the first)."""
        keyed = [(at, job_id, kind) for at, (job_id, kind, is_keyed) in enumerate(jobs) if is_keyed]
        fresh = [True] * len(jobs)
        if not keyed:
            return fresh
        pipe = self._redis.pipeline(transaction=False)
        for _, job_id, kind in keyed:
            pipe.set(IDEMPOTENCY_PREFIX + job_id, kind, nx=True, ex=self.settings.result_expires)
        for (at, _, _), new in zip(keyed, pipe.execute(), strict=True):
            fresh[at] = bool(new)
        return fresh

    # -- publishing -----------------------------------------------------------------------
    def _publish_redis(self, messages: Sequence[TaskMessage]) -> None:
        assert self._broker_redis is not None
        for start in range(0, len(messages), BATCH_CHUNK):
            pipe = self._broker_redis.pipeline(transaction=False)
            for m in messages[start : start + BATCH_CHUNK]:
                pipe.lpush(redis_priority_key(m.queue, m.priority), m.redis_envelope())
            pipe.execute()

    def _publish_amqp(self, messages: Sequence[TaskMessage]) -> None:
        with self._amqp_lock:
            if self._amqp is None:
                self._amqp = Connection(self._urls.broker_url, transport_options={})
            conn = self._amqp.clone()
        with conn:
            channel = conn.channel()
            for queue in self.topology.all_queues():
                queue(channel).declare()
            producer = Producer(channel)
            for start in range(0, len(messages), BATCH_CHUNK):
                channel.tx_select()
                for m in messages[start : start + BATCH_CHUNK]:
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

    def _send(self, messages: Sequence[TaskMessage]) -> list[JobHandle]:
        fresh = self._claim(messages)
        to_send = [m for m, new in zip(messages, fresh, strict=True) if new]
        if to_send:
            try:
                if self._broker_redis is not None:
                    self._publish_redis(to_send)
                else:
                    self._publish_amqp(to_send)
            except BaseException:
                # Not published: free the idempotency claims so a retry really sends the jobs.
                keyed = [m.job_id for m in to_send if "taskfleet_idempotency_key" in m.headers]
                if keyed:
                    self._redis.delete(*(IDEMPOTENCY_PREFIX + job_id for job_id in keyed))
                raise
        return [
            JobHandle(m.job_id, m.kind, self.app, deduplicated=not new)
            for m, new in zip(messages, fresh, strict=True)
        ]

    def enqueue(
        self,
        kind: str,
        payload: Any = None,
        *,
        priority: Priority | None = None,
        idempotency_key: str | None = None,
        client_id: str | None = None,
    ) -> JobHandle:
        """Publish one job of ``kind`` with ``payload`` (any JSON value).

        Args:
            kind: A job kind, e.g. ``"cpu.checksum"``.
            payload: The job's single argument; must be JSON-serialisable.
            priority: 0..9 (9 most urgent) or low/normal/high/critical; default normal.
            idempotency_key: Jobs with the same kind and key are the same job: only the
                first is published, later calls return a handle to it (``deduplicated``).
            client_id: Who sent it, carried in the message headers.

        Raises:
            UnknownJobKind, PayloadError, PriorityError: nothing was published.
        """
        message = self._message(kind, payload, priority, idempotency_key, client_id)
        return self._send([message])[0]

    def enqueue_many(
        self,
        jobs: Iterable[JobSpec | tuple[str, Any] | Mapping[str, Any]],
        *,
        priority: Priority | None = None,
        client_id: str | None = None,
    ) -> list[JobHandle]:
        """Publish a batch in few round trips; every job is validated before any is sent."""
        if self._broker_redis is not None:
            return self._enqueue_many_redis(list(jobs), priority, client_id)
        messages: list[TaskMessage] = []
        for item in jobs:
            spec = as_spec(item)
            messages.append(
                self._message(
                    spec.kind,
                    spec.payload,
                    spec.priority if spec.priority is not None else priority,
                    spec.idempotency_key,
                    client_id,
                )
            )
        return self._send(messages)

    def _enqueue_many_redis(
        self,
        jobs: Sequence[JobSpec | tuple[str, Any] | Mapping[str, Any]],
        priority: Priority | None,
        client_id: str | None,
    ) -> list[JobHandle]:
        """The same messages as ``_message`` + ``redis_envelope``, built from one
        :class:`EnvelopeTemplate` per (kind, priority, keyed) and sent as one multi-value
        LPUSH per priority sub-list and chunk (see :meth:`_push`)."""
        default_level = parse_priority(priority)
        headers = {} if client_id is None else {"taskfleet_client_id": client_id}
        templates: dict[tuple[str, int, bool], tuple[EnvelopeTemplate, str]] = {}
        job_ids = new_job_ids(len(jobs))
        kinds: list[str] = []
        keys: list[str | None] = []
        lists: list[str] = []  # the Redis list (priority sub-list) of each job
        envelopes: list[bytes] = []
        for at, item in enumerate(jobs):
            if type(item) is tuple and len(item) == 2:  # the common (kind, payload) form
                kind, payload = item
                level, key = default_level, None
            else:
                spec = as_spec(item)
                kind, payload, key = spec.kind, spec.payload, spec.idempotency_key
                level = default_level if spec.priority is None else parse_priority(spec.priority)
            found = templates.get((kind, level, key is not None))
            if found is None:
                queue = self._queue_of(kind)
                template = EnvelopeTemplate(kind, queue, level, headers, keyed=key is not None)
                found = (template, redis_priority_key(queue, level))
                templates[kind, level, key is not None] = found
            template, list_key = found
            if key is not None:
                job_ids[at] = job_id_for(kind, key)
            envelopes.append(template.render(job_ids[at], self._body(kind, payload), key))
            kinds.append(kind)
            keys.append(key)
            lists.append(list_key)
        fresh = self._claim_jobs(
            [
                (job_id, kind, key is not None)
                for job_id, kind, key in zip(job_ids, kinds, keys, strict=True)
            ]
        )
        try:
            self._push([(k, e) for k, e, new in zip(lists, envelopes, fresh, strict=True) if new])
        except BaseException:
            # Not published: free the idempotency claims so a retry really sends the jobs.
            claimed = [
                IDEMPOTENCY_PREFIX + job_id
                for job_id, key, new in zip(job_ids, keys, fresh, strict=True)
                if new and key is not None
            ]
            if claimed:
                self._redis.delete(*claimed)
            raise
        app = self.app
        return [
            JobHandle(job_id, kind, app, deduplicated=not new)
            for job_id, kind, new in zip(job_ids, kinds, fresh, strict=True)
        ]

    def _push(self, envelopes: Sequence[tuple[str, bytes]]) -> None:
        """LPUSH (list key, envelope) pairs: one command per list and ``BATCH_CHUNK`` values,
        all in one pipeline. ``LPUSH key a b c`` pushes a, then b, then c, exactly as three
        single LPUSHes would, so every list keeps the batch's order (FIFO for consumers)."""
        assert self._broker_redis is not None
        by_list: dict[str, list[bytes]] = {}
        for list_key, envelope in envelopes:
            by_list.setdefault(list_key, []).append(envelope)
        pipe = self._broker_redis.pipeline(transaction=False)
        for list_key, values in by_list.items():
            for start in range(0, len(values), BATCH_CHUNK):
                pipe.lpush(list_key, *values[start : start + BATCH_CHUNK])
        pipe.execute()

    def handle(self, job_id: str, kind: str = "") -> JobHandle:
        """A handle for a job published earlier (by id)."""
        return JobHandle(job_id, kind, self.app)

    def close(self) -> None:
        """Release connections."""
        self._redis.close()
        if self._broker_redis is not None:
            self._broker_redis.close()
        if self._amqp is not None:
            self._amqp.release()


__all__ = [
    "DEFAULT_RESULT_TIMEOUT_S",
    "AsyncClient",
    "Client",
    "JobFailed",
    "JobHandle",
    "JobSpec",
    "PayloadError",
]
