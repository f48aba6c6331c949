"""Producer API: enqueue jobs, one or many, and read their results.

``enqueue`` and ``enqueue_many`` publish the exact messages Celery would (protocol v2, JSON),
so any Celery worker understands them and any Celery client reads their results. On Redis a
batch is one pipeline of multi-value LPUSHes (one per priority sub-list and ``BATCH_CHUNK``
jobs), its envelopes rendered from templates; on RabbitMQ one transaction per chunk
(:mod:`taskfleet.amqp_publisher`). Idempotency keys are claimed so that a crash never leaves
a key on a job that was not sent (:mod:`taskfleet.claims`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis
from celery import Celery

from taskfleet.amqp_publisher import KEY_HEADER, AmqpPublisher
from taskfleet.claims import (
    CLAIM_WINDOW_S,
    IDEMPOTENCY_PREFIX,
    PUSH_CHUNK,
    ClaimPending,
    PendingClaims,
    RedisPublisher,
    idempotency_ttl,
)
from taskfleet.config import resolve_services
from taskfleet.config.app_settings import settings_of
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

#: Jobs per LPUSH command (Redis) or AMQP transaction.
BATCH_CHUNK = PUSH_CHUNK


class Client:
    """Publishes jobs to a taskfleet fleet. Thread-safe; reuse one per process.

    Idempotency keys are claimed so that a producer crash never strands a key on a job that
    was not sent (:mod:`taskfleet.claims`): on Redis, claim and publish are one script; on
    RabbitMQ, a claim lives ``claim_window_s`` seconds until the publish confirms it.
    """

    #: Seconds a RabbitMQ claim lives unconfirmed (how long a crashed call blocks a retry).
    claim_window_s: float = CLAIM_WINDOW_S

    def __init__(self, app: Celery | None = None) -> None:
        if app is None:
            from taskfleet.app import app as default_app

            app = default_app
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
        ttl = idempotency_ttl(self.settings.result_expires, self.settings.visibility_timeout)
        self._redis_publisher = (
            RedisPublisher(self._broker_redis, ttl) if self._broker_redis is not None else None
        )
        self._amqp_publisher = (
            None
            if self._broker_redis is not None
            else AmqpPublisher(
                self._urls.broker_url, self.topology, PendingClaims(self._redis, ttl)
            )
        )

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

    # -- publishing -----------------------------------------------------------------------
    def _before_publish(self, job_ids: Sequence[str]) -> None:
        """Runs after the claims are taken and before the jobs are published (RabbitMQ),
        or just before the claim-and-push (Redis). Does nothing: a seam for crash tests."""

    def _send(self, messages: Sequence[TaskMessage]) -> list[JobHandle]:
        if self._redis_publisher is not None:
            keyed = [m.job_id if KEY_HEADER in m.headers else None for m in messages]
            lists = [redis_priority_key(m.queue, m.priority) for m in messages]
            envelopes = [m.redis_envelope() for m in messages]
            self._before_publish([m.job_id for m in messages])
            if any(job_id is not None for job_id in keyed):
                kinds = [m.kind for m in messages]
                fresh = self._redis_publisher.claim_and_push(lists, envelopes, keyed, kinds)
            else:
                self._redis_publisher.push(lists, envelopes)
                fresh = [True] * len(messages)
        else:
            assert self._amqp_publisher is not None
            fresh = self._amqp_publisher.send(messages, self.claim_window_s, self._before_publish)
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
            idempotency_key: Jobs with the same kind and key are the same job (its id is
                derived from the key): only the first is published, later calls return a
                handle to it (``deduplicated``). A call made while another is still
                publishing that job waits for it (RabbitMQ); if that call crashed, this one
                publishes the job once its claim expires (``claim_window_s``).
            client_id: Who sent it, carried in the message headers.

        Raises:
            UnknownJobKind, PayloadError, PriorityError: nothing was published.
            ClaimPending: another call's claim on the key neither resolved nor expired.
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
        LPUSH per priority sub-list and chunk (see :meth:`RedisPublisher.push`)."""
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
        self._before_publish(job_ids)
        assert self._redis_publisher is not None
        if any(key is not None for key in keys):
            keyed = [j if k is not None else None for j, k in zip(job_ids, keys, strict=True)]
            fresh = self._redis_publisher.claim_and_push(lists, envelopes, keyed, kinds)
        else:
            self._redis_publisher.push(lists, envelopes)
            fresh = [True] * len(job_ids)
        app = self.app
        return [
            JobHandle(job_id, kind, app, deduplicated=not new)
            for job_id, kind, new in zip(job_ids, kinds, fresh, strict=True)
        ]

    def handle(self, job_id: str, kind: str = "") -> JobHandle:
        """A handle for a job published earlier (by id)."""
        return JobHandle(job_id, kind, self.app)

    def close(self) -> None:
        """Release connections."""
        self._redis.close()
        if self._broker_redis is not None:
            self._broker_redis.close()
        if self._amqp_publisher is not None:
            self._amqp_publisher.close()


__all__ = [
    "DEFAULT_RESULT_TIMEOUT_S",
    "IDEMPOTENCY_PREFIX",
    "ClaimPending",
    "Client",
    "JobFailed",
    "JobHandle",
    "JobSpec",
    "PayloadError",
]
