"""Producer API: enqueue jobs, one or many, and read their results.

``enqueue`` and ``enqueue_many`` publish the exact messages Celery would (protocol v2, JSON),
so any Celery worker understands them and any Celery client reads their results. On Redis a
batch is one pipeline per ``BATCH_CHUNK`` jobs; on RabbitMQ one transaction per chunk.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery
from celery.result import AsyncResult
from kombu import Connection, Producer

from taskfleet.config import resolve_services
from taskfleet.routing.depth import redis_priority_key
from taskfleet.routing.priority import Priority, parse_priority
from taskfleet.routing.topology import Topology, UnknownJobKind
from taskfleet.routing.wire import TaskMessage, job_id_for

BATCH_CHUNK = 1000
IDEMPOTENCY_PREFIX = "taskfleet:idem:"
DEFAULT_RESULT_TIMEOUT_S = 30.0


class PayloadError(ValueError):
    """A payload that cannot be sent: not JSON-serialisable, or over the size limit."""


class JobFailed(RuntimeError):
    """The job ended in FAILURE; ``error_type`` and ``args`` say what it raised."""

    def __init__(self, job_id: str, error_type: str, message: str) -> None:
        super().__init__(f"job {job_id} failed: {error_type}: {message}")
        self.job_id = job_id
        self.error_type = error_type


@dataclass(frozen=True)
class JobSpec:
    """One job for :meth:`Client.enqueue_many`."""

    kind: str
    payload: Any = None
    priority: Priority | None = None
    idempotency_key: str | None = None


@dataclass(slots=True)
class JobHandle:
    """A published job: its id, its state, and its result when it has one."""

    id: str
    kind: str
    app: Celery = field(repr=False)
    deduplicated: bool = False

    @property
    def async_result(self) -> AsyncResult:
        """Celery's view of the job."""
        return AsyncResult(self.id, app=self.app)

    def status(self) -> str:
        """PENDING, STARTED, RETRY, SUCCESS, FAILURE or REVOKED."""
        return str(self.async_result.state)

    def ready(self) -> bool:
        """Whether the job has finished (either way)."""
        return bool(self.async_result.ready())

    def result(self, timeout: float | None = DEFAULT_RESULT_TIMEOUT_S) -> Any:
        """Wait up to ``timeout`` seconds for the job's return value.

        Raises:
            JobFailed: the job raised; the error type and message are on the exception.
            TimeoutError: the job did not finish in time (it may still finish later).
        """
        from celery.exceptions import TimeoutError as CeleryTimeout

        res = self.async_result
        try:
            value = res.get(timeout=timeout, propagate=False, disable_sync_subtasks=False)
        except CeleryTimeout:
            raise TimeoutError(
                f"job {self.id} ({self.kind}) not finished after {timeout}s"
            ) from None
        if res.failed():
            raise JobFailed(self.id, type(value).__name__, str(value))
        return value


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
    def _message(
        self,
        kind: str,
        payload: Any,
        priority: Priority | None,
        idempotency_key: str | None,
        client_id: str | None,
    ) -> TaskMessage:
        pool = self._pools.get(kind)
        if pool is None:
            known = ", ".join(sorted(self._pools))
            raise UnknownJobKind(f"unknown job kind {kind!r}; known kinds: {known}")
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
                queue=self.topology.queue_for_pool(pool),
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

    # -- idempotency ----------------------------------------------------------------------
    def _claim(self, messages: Sequence[TaskMessage]) -> list[bool]:
        """SET NX one marker per keyed job; False for a job already enqueued before."""
        keyed = [m for m in messages if "taskfleet_idempotency_key" in m.headers]
        if not keyed:
            return [True] * len(messages)
        pipe = self._redis.pipeline(transaction=False)
        for m in keyed:
            pipe.set(
                IDEMPOTENCY_PREFIX + m.job_id, m.kind, nx=True, ex=self.settings.result_expires
            )
        claimed = dict(zip((m.job_id for m in keyed), pipe.execute(), strict=True))
        return [bool(claimed.get(m.job_id, True)) for m in messages]

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
        messages: list[TaskMessage] = []
        for item in jobs:
            spec = _as_spec(item)
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


def _as_spec(item: JobSpec | tuple[str, Any] | Mapping[str, Any]) -> JobSpec:
    if isinstance(item, JobSpec):
        return item
    if isinstance(item, tuple):
        return JobSpec(*item)
    if isinstance(item, Mapping):
        return JobSpec(**item)
    raise TypeError(f"a job is a JobSpec, a (kind, payload) tuple or a mapping, not {item!r}")


class AsyncClient:
    """The asyncio face of :class:`Client` for async services.

    Publishing takes one round trip (a pipeline or a transaction), so it runs in the default
    executor rather than duplicating the client on ``redis.asyncio``; waiting for results
    likewise, so the event loop is never blocked.
    """

    def __init__(self, client: Client | None = None) -> None:
        self.client = client or Client()

    async def enqueue(self, kind: str, payload: Any = None, **options: Any) -> JobHandle:
        """See :meth:`Client.enqueue`."""
        return await asyncio.to_thread(self.client.enqueue, kind, payload, **options)

    async def enqueue_many(self, jobs: Iterable[Any], **options: Any) -> list[JobHandle]:
        """See :meth:`Client.enqueue_many`."""
        return await asyncio.to_thread(self.client.enqueue_many, list(jobs), **options)

    async def result(self, handle: JobHandle, timeout: float = DEFAULT_RESULT_TIMEOUT_S) -> Any:
        """Wait for a job's result without blocking the event loop."""
        return await asyncio.to_thread(handle.result, timeout)
