"""Producer API: enqueue jobs, one or many, and read their results.

``enqueue`` and ``enqueue_many`` publish the exact messages Celery would (protocol v2, JSON),
so any Celery worker understands them and any Celery client reads their results. Both take
one path: every job is validated once (:meth:`Client.prepare`: its kind's queue, priority,
JSON body and size) before any is sent, and the list goes to the publisher the broker URL's
scheme picked (:mod:`taskfleet.publishing`): on Redis one pipeline of multi-value LPUSHes
(one per priority sub-list and ``PUSH_CHUNK`` jobs), or one claim-and-push script when a job
is keyed; on RabbitMQ one transaction per chunk on a reused connection. Idempotency keys are
claimed so that a crash never leaves a key on a job that was not sent
(:mod:`taskfleet.claims`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from celery import Celery

from taskfleet.claims import CLAIM_WINDOW_S, IDEMPOTENCY_PREFIX, ClaimPending, idempotency_ttl
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
from taskfleet.publishing import PreparedJobs, PublisherConfig, publisher_for
from taskfleet.routing.priority import Priority, PriorityError, parse_priority
from taskfleet.routing.topology import Topology, UnknownJobKind
from taskfleet.routing.wire import encode_single_arg_body, job_id_for, new_job_ids

#: One ``enqueue_many`` item: a spec, a ``(kind, payload)`` pair, or a mapping of JobSpec's fields.
JobItem = JobSpec | tuple[str, Any] | Mapping[str, Any]


class Client:
    """Publishes jobs to a taskfleet fleet. Thread-safe; reuse one per process.

    Idempotency keys are claimed so that a producer crash never strands a key on a job that
    was not sent (:mod:`taskfleet.claims`): on Redis, claim and publish are one script; on
    RabbitMQ, a claim lives ``claim_window_s`` seconds until the publish confirms it.
    """

    #: Seconds a RabbitMQ claim lives unconfirmed (how long a crashed call blocks a retry);
    #: read when the client is built (set it on a subclass).
    claim_window_s: float = CLAIM_WINDOW_S

    def __init__(self, app: Celery | None = None) -> None:
        # A light producer: the job table is data, and the default app declares no job and
        # installs no worker hook (no job module, middleware or worker hook is imported).
        from taskfleet.app_config import producer_app
        from taskfleet.tasks.table import JOB_POOLS

        if app is None:
            app = producer_app()

        self.app = app
        self.settings = settings_of(app)
        self.topology = Topology.from_settings(self.settings)
        self._pools = JOB_POOLS
        self.urls = resolve_services(self.settings)
        #: What the publisher was built from (``claim_window_s`` is read here, once).
        self.publisher_config = PublisherConfig(
            broker_url=self.urls.broker_url,
            redis_url=self.urls.redis_url,
            topology=self.topology,
            claim_ttl_s=idempotency_ttl(
                self.settings.result_expires, self.settings.visibility_timeout
            ),
            claim_window_s=self.claim_window_s,
            before_publish=self._before_publish,
        )
        self.publisher = publisher_for(self.publisher_config)

    # -- validating -----------------------------------------------------------------------
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

    def prepare(self, jobs: Sequence[JobItem], priority: Priority | None = None) -> PreparedJobs:
        """Validate ``jobs`` and fix their ids, sending nothing (what ``enqueue_many`` sends).

        Args:
            jobs: The jobs, in order.
            priority: The priority of a job that names none.

        Raises:
            UnknownJobKind, PayloadError, PriorityError: a job cannot be sent.
            TypeError: an item is not a job.
        """
        default = parse_priority(priority)
        prepared = PreparedJobs(job_ids=new_job_ids(len(jobs)))
        kinds, bodies, queues = prepared.kinds, prepared.bodies, prepared.queues
        levels, keys = prepared.priorities, prepared.keys
        queue_of: dict[str, str] = {}
        encode = self._body
        for at, item in enumerate(jobs):
            if type(item) is tuple and len(item) == 2:  # the common (kind, payload) form
                kind, payload = item
                spec_priority, key = None, None
            else:
                spec = as_spec(item)
                kind, payload = spec.kind, spec.payload
                spec_priority, key = spec.priority, spec.idempotency_key
            queue = queue_of.get(kind)
            if queue is None:
                queue = queue_of[kind] = self._queue_of(kind)
            levels.append(default if spec_priority is None else parse_priority(spec_priority))
            if key is not None:
                prepared.job_ids[at] = job_id_for(kind, key)
            bodies.append(encode(kind, payload))
            kinds.append(kind)
            queues.append(queue)
            keys.append(key)
        return prepared

    # -- publishing -----------------------------------------------------------------------
    def _before_publish(self, job_ids: Sequence[str]) -> None:
        """Runs after the claims are taken and before the jobs are published (RabbitMQ),
        or just before the claim-and-push (Redis). Does nothing: a seam for crash tests."""

    def handles_for(self, jobs: PreparedJobs, fresh: Sequence[bool]) -> list[JobHandle]:
        """Handles on published jobs (``fresh[i]`` False: job i was enqueued earlier)."""
        app = self.app
        return [
            JobHandle(job_id, kind, app, deduplicated=not new)
            for job_id, kind, new in zip(jobs.job_ids, jobs.kinds, fresh, strict=True)
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
        jobs = self.prepare([JobSpec(kind, payload, priority, idempotency_key)])
        return self.handles_for(jobs, self.publisher.publish(jobs, client_id))[0]

    def enqueue_many(
        self,
        jobs: Iterable[JobItem],
        *,
        priority: Priority | None = None,
        client_id: str | None = None,
    ) -> list[JobHandle]:
        """Publish a batch in few round trips; every job is validated before any is sent.

        Args:
            jobs: :class:`JobSpec` items, ``(kind, payload)`` pairs or mappings of their
                fields.
            priority: The priority of a job that names none.
            client_id: Who sent them, carried in the message headers.

        Raises:
            See :meth:`enqueue`; nothing was published.
        """
        prepared = self.prepare(list(jobs), priority)
        return self.handles_for(prepared, self.publisher.publish(prepared, client_id))

    def handle(self, job_id: str, kind: str = "") -> JobHandle:
        """A handle for a job published earlier (by id)."""
        return JobHandle(job_id, kind, self.app)

    def close(self) -> None:
        """Release connections."""
        self.publisher.close()


__all__ = [
    "DEFAULT_RESULT_TIMEOUT_S",
    "IDEMPOTENCY_PREFIX",
    "ClaimPending",
    "Client",
    "JobFailed",
    "JobHandle",
    "JobItem",
    "JobSpec",
    "PayloadError",
    "PriorityError",
    "UnknownJobKind",
]
