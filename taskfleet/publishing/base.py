"""What every publisher takes: validated jobs, and the one interface a broker's publisher has.

:class:`taskfleet.client.Client` validates each job once (its kind's queue, its priority, its
JSON body and size) into :class:`PreparedJobs`, for ``enqueue`` and ``enqueue_many`` alike,
and hands them to the :class:`Publisher` its broker URL's scheme picked
(:func:`taskfleet.publishing.publisher_for`). A publisher turns them into its broker's
messages (Celery protocol v2, JSON) and publishes them, claiming idempotency keys as
:mod:`taskfleet.claims` describes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from taskfleet.routing.topology import Topology
from taskfleet.routing.wire import SENT_AT_HEADER

#: Message header naming who sent a job (``client_id``).
CLIENT_HEADER = "taskfleet_client_id"
#: Message header carrying a job's idempotency key.
KEY_HEADER = "taskfleet_idempotency_key"


@dataclass(slots=True)
class PreparedJobs:
    """Validated jobs, column by column (a batch of 10,000 builds no object per job).

    Each job's id is final, its body encoded and within the size limit.
    """

    kinds: list[str] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    priorities: list[int] = field(default_factory=list)
    queues: list[str] = field(default_factory=list)
    #: Each job's idempotency key, None for an unkeyed job.
    keys: list[str | None] = field(default_factory=list)
    #: Headers every job of the batch carries (its trace context; empty when not traced).
    headers: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.job_ids)

    @property
    def keyed(self) -> bool:
        """Whether any job carries an idempotency key."""
        return any(key is not None for key in self.keys)

    def rows(self) -> Iterator[tuple[str, str, bytes, int, str, str | None]]:
        """Per job: kind, id, body, priority, queue, idempotency key."""
        return zip(
            self.kinds, self.job_ids, self.bodies, self.priorities, self.queues, self.keys,
            strict=True,
        )  # fmt: skip


def extra_headers(
    client_id: str | None, idempotency_key: str | None = None, sent_at: float | None = None
) -> dict[str, Any]:
    """The headers taskfleet adds to Celery's: the sender, the key of a keyed job, and the
    publish time (``sent_at``; the Redis publisher stamps it in its templates)."""
    headers: dict[str, Any] = {}
    if sent_at is not None:
        headers[SENT_AT_HEADER] = round(sent_at, 6)
    if client_id is not None:
        headers[CLIENT_HEADER] = client_id
    if idempotency_key is not None:
        headers[KEY_HEADER] = idempotency_key
    return headers


def no_hook(job_ids: Sequence[str]) -> None:
    """The default ``before_publish``: nothing."""


@dataclass(frozen=True)
class PublisherConfig:
    """What a publisher is built from (read once, when the client is built).

    Attributes:
        broker_url: Where jobs go; its scheme picks the publisher.
        redis_url: taskfleet's Redis, which keeps the claims of a RabbitMQ broker.
        topology: The queues (RabbitMQ declares them, once per client).
        claim_ttl_s: How long a confirmed idempotency marker lives.
        claim_window_s: How long a RabbitMQ claim lives unconfirmed.
        before_publish: Called with the ids about to be published, after any claims
            (RabbitMQ) or just before the claim-and-push (Redis): a seam for crash tests.
    """

    broker_url: str
    redis_url: str
    topology: Topology
    claim_ttl_s: int
    claim_window_s: float
    before_publish: Callable[[Sequence[str]], None] = no_hook


class Publisher(Protocol):
    """Publishes prepared jobs to one broker. Implementations are thread-safe."""

    def publish(self, jobs: PreparedJobs, client_id: str | None) -> list[bool]:
        """Publish ``jobs`` (keyed ones only if not enqueued before), in order.

        Returns:
            Per job, whether this call published it (False: an earlier call did).

        Raises:
            ClaimPending: another call's claim on a key neither resolved nor expired.
        """
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class AsyncPublisher(Protocol):
    """The asyncio form of :class:`Publisher`."""

    async def publish(self, jobs: PreparedJobs, client_id: str | None) -> list[bool]:
        """See :meth:`Publisher.publish`."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
