"""Producer API: enqueue jobs, one or many, and read their results.

``enqueue`` and ``enqueue_many`` publish the exact messages Celery would (protocol v2, JSON),
so any Celery worker understands them and any Celery client reads their results. Both take
one path: every job is validated once (:meth:`Client.prepare`: its kind's queue, priority,
JSON body and size) before any is sent, and the list goes to the publisher the broker URL's
scheme picked (:mod:`taskfleet.publishing`): on Redis one pipeline of multi-value LPUSHes
(one per priority sub-list and ``PUSH_CHUNK`` jobs), or one claim-and-push script when a job
is keyed; on RabbitMQ one transaction per chunk on a reused connection. Idempotency keys are
claimed so that a crash never leaves a key on a job that was not sent
(:mod:`taskfleet.claims`). Before publishing, a batch passes the enqueue gate when one is
configured (:mod:`taskfleet.ratelimit.enqueue`: admission control, then the client's rate
limit); refused, nothing of it is published. With worker groups declared, each job goes
to one group's queue (``cpu@eu``), picked by :mod:`taskfleet.routing.groups`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from celery import Celery

from taskfleet.claims import CLAIM_WINDOW_S, IDEMPOTENCY_PREFIX, ClaimPending, idempotency_ttl
from taskfleet.config import resolve_services
from taskfleet.config.app_settings import settings_of
from taskfleet.config.groups import GroupSettings, get_group_settings
from taskfleet.config.limits import LimitSettings, get_limit_settings
from taskfleet.handles import DEFAULT_RESULT_TIMEOUT_S, JobFailed, JobHandle, JobSpec, PayloadError
from taskfleet.observability.tracing import producer_tracer, publish_span
from taskfleet.preparing import JobItem, JobPreparer
from taskfleet.publishing import PreparedJobs, PublisherConfig, publisher_for
from taskfleet.ratelimit.enqueue import EnqueueGate
from taskfleet.ratelimit.errors import BatchTooLarge, Overloaded, RateLimited
from taskfleet.ratelimit.stale import stale_answers
from taskfleet.routing.priority import Priority, PriorityError
from taskfleet.routing.topology import Topology, UnknownJobKind

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from taskfleet.routing.groups import GroupRouter


class Client(JobPreparer):
    """Publishes jobs to a taskfleet fleet. Thread-safe; reuse one per process.

    Idempotency keys are claimed so that a producer crash never strands a key on a job that
    was not sent (:mod:`taskfleet.claims`): on Redis, claim and publish are one script; on
    RabbitMQ, a claim lives ``claim_window_s`` seconds until the publish confirms it.
    """

    #: Seconds a RabbitMQ claim lives unconfirmed (how long a crashed call blocks a retry);
    #: read when the client is built (set it on a subclass).
    claim_window_s: float = CLAIM_WINDOW_S

    def __init__(
        self,
        app: Celery | None = None,
        *,
        client_id: str | None = None,
        limits: LimitSettings | None = None,
        group: str | None = None,
        groups: GroupSettings | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        """``client_id``: who this producer is, for calls that name none (the
        ``taskfleet_client_id`` header, the key of per-client limits); ``limits``: rate-limit
        and admission settings (default: ``TASKFLEET_LIMITS_*``); ``group``: the worker group
        of calls that name none; ``groups``: group settings (default: from the environment);
        ``tracer_provider``: trace every call with it (default: the global provider when
        ``TASKFLEET_TRACING`` is on, else no tracing; :mod:`taskfleet.observability.tracing`)."""
        # A light producer: the job table is data, and the default app declares no job and
        # installs no worker hook (no job module, middleware or worker hook is imported).
        from taskfleet.app_config import producer_app
        from taskfleet.tasks.table import JOB_POOLS

        groups = groups or get_group_settings()
        self.group = groups.check(group)  # before any connection
        if app is None:
            app = producer_app()

        self.app = app
        self.settings = settings_of(app)
        self.topology = Topology.from_settings(self.settings, tuple(groups.worker_groups))
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
        self.client_id = client_id
        #: Starts each call's PRODUCER span; None when not tracing.
        self.tracer = producer_tracer(tracer_provider)
        queues = [self.topology.cpu_queue, self.topology.io_queue]
        #: Picks each job's worker group; None when no group is declared.
        self.router: GroupRouter | None = None
        if groups.enabled:
            from taskfleet.routing.groups import router_for

            self.router = router_for(groups, queues, self.urls.broker_url, self.settings)
        gate = EnqueueGate(
            limits or get_limit_settings(),
            self.urls.redis_url,
            queues + self.topology.group_queues("cpu") + self.topology.group_queues("io"),
            broker_url=self.urls.broker_url,
        )
        #: Admission control and per-client limits; None when neither is configured.
        self.gate = gate if gate.active else None
        #: Kinds answered from a stale cached result while overloaded (None: none).
        self.stale = stale_answers(app, gate.settings, self.urls.redis_url)

    # -- admitting -------------------------------------------------------------------------
    def sender(self, client_id: str | None) -> str | None:
        """The client id a call goes out with: its own, else the client's."""
        return self.client_id if client_id is None else client_id

    def place(self, jobs: PreparedJobs, group: str | None, affinity: str | None) -> None:
        """Send ``jobs`` to worker groups' queues, in place (see :meth:`enqueue`)."""
        if self.router is None:
            raise ValueError(f"group {group!r} asked for, but no worker group is declared")
        self.router.place(jobs.queues, self.group if group is None else group, affinity)

    def publish(self, jobs: PreparedJobs, client_id: str | None) -> list[bool]:
        """Publish ``jobs`` through the enqueue gate when one is configured.

        Raises:
            Overloaded, RateLimited, BatchTooLarge: nothing was published.
        """
        with publish_span(self.tracer, jobs.kinds) as jobs.headers:
            if self.gate is not None:
                return self.gate.publish(jobs, client_id, self.publisher)
            return self.publisher.publish(jobs, client_id)

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
        group: str | None = None,
        affinity: str | None = None,
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
            client_id: Who sent it (default: the client's ``client_id``), carried in the
                ``taskfleet_client_id`` header; its enqueue limit applies.
            group: The worker group to run it (default: the client's); another one if it
                has no live worker or its oldest job waited past ``TASKFLEET_GROUP_MAX_AGE``.
            affinity: With no group asked for, jobs with the same key go to the same group
                (consistent hash over the healthy groups).

        Raises:
            UnknownJobKind, PayloadError, PriorityError: nothing was published.
            ValueError: ``group`` is not a declared worker group.
            RateLimited: over the client's enqueue limit (``retry_after``).
            Overloaded: the queue is overloaded, the priority below the bar (``retry_after``),
                and no stale result may answer (``TASKFLEET_LIMITS_OVERLOAD_STALE``).
            ClaimPending: another call's claim on the key neither resolved nor expired.
        """
        jobs = self.prepare([JobSpec(kind, payload, priority, idempotency_key)])
        if self.router is not None or group is not None:
            self.place(jobs, group, affinity)
        try:
            return self.handles_for(jobs, self.publish(jobs, self.sender(client_id)))[0]
        except Overloaded as exc:
            answer = None if self.stale is None else self.stale.answer(kind, payload, exc.queue)
            if answer is None:
                raise
            return answer

    def enqueue_many(
        self,
        jobs: Iterable[JobItem],
        *,
        priority: Priority | None = None,
        client_id: str | None = None,
        group: str | None = None,
        affinity: str | None = None,
    ) -> list[JobHandle]:
        """Publish a batch in few round trips; every job is validated before any is sent.

        Args:
            jobs: :class:`JobSpec` items, ``(kind, payload)`` pairs or mappings of their
                fields.
            priority: The priority of a job that names none.
            client_id: Who sent them (default: the client's ``client_id``).
            group, affinity: As for :meth:`enqueue`; the batch's jobs of one pool go to
                one group.

        The batch is admitted whole or refused whole (all or nothing): one check of
        ``len(jobs)`` units against the client's limit.

        Raises:
            See :meth:`enqueue`; nothing was published.
            BatchTooLarge: the batch exceeds the client's burst; it could never be admitted.
        """
        prepared = self.prepare(list(jobs), priority)
        if self.router is not None or group is not None:
            self.place(prepared, group, affinity)
        return self.handles_for(prepared, self.publish(prepared, self.sender(client_id)))

    def handle(self, job_id: str, kind: str = "") -> JobHandle:
        """A handle for a job published earlier (by id)."""
        return JobHandle(job_id, kind, self.app)

    def close(self) -> None:
        """Release connections."""
        self.publisher.close()


__all__ = [
    "DEFAULT_RESULT_TIMEOUT_S",
    "IDEMPOTENCY_PREFIX",
    "BatchTooLarge",
    "ClaimPending",
    "Client",
    "JobFailed",
    "JobHandle",
    "JobItem",
    "JobSpec",
    "Overloaded",
    "PayloadError",
    "PriorityError",
    "RateLimited",
    "UnknownJobKind",
]
