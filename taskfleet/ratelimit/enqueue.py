"""What a :class:`~taskfleet.client.Client` checks before it publishes: admission control,
then its client's rate limit at enqueue.

The limit of a client is looked up in ``TASKFLEET_LIMITS_ENQUEUE`` (its id, else ``"*"``); a
call without a client id, or with no limit, costs nothing. A limited call is one Lua call
(:mod:`~taskfleet.ratelimit.redis_store`); when the broker is the Redis the limits live on
(the default) and no job is keyed, that same call publishes the jobs it admits, so a limited
``enqueue`` costs no extra round trip. Over the limit, ``enqueue`` raises
:class:`RateLimited` and nothing is published.

``enqueue_many`` is all or nothing: the batch is charged as one call of ``len(jobs)`` units,
admitted whole or refused whole (``retry_after`` is when the whole batch fits). A batch
larger than the limit's burst could never fit and raises :class:`BatchTooLarge` at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from taskfleet.claims import push_groups
from taskfleet.config.limits import LimitSettings
from taskfleet.publishing.base import PreparedJobs, Publisher
from taskfleet.publishing.redis import RedisPublisher, encode
from taskfleet.ratelimit.admission import OverloadGate
from taskfleet.ratelimit.errors import BatchTooLarge, RateLimited
from taskfleet.ratelimit.limiter import Limit, Limiter
from taskfleet.ratelimit.policies import Policy, policy_from_spec

#: The client-table entry that applies to every client not listed.
ANY_CLIENT = "*"
#: Client ids whose limits (and so their call plans) are kept for reuse; cleared when full.
LIMITS_CACHE_SIZE = 4096


def client_policy(table: dict[str, str], client_id: str | None) -> Policy | None:
    """The limit a client table gives ``client_id`` (its entry, else ``"*"``), if any."""
    if client_id is None:
        return None
    spec = table.get(client_id, table.get(ANY_CLIENT))
    return None if spec is None else policy_from_spec(spec)


class EnqueueGate:
    """Admission control and per-client enqueue limits for one client. Thread-safe."""

    def __init__(
        self,
        settings: LimitSettings,
        redis_url: str,
        queues: Sequence[str],
        *,
        broker_url: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.table = dict(settings.enqueue)
        self._policies: dict[str, Policy | None] = {}
        self._limits: dict[str, list[Limit]] = {}
        self.limiter: Limiter | None = None
        if self.table:
            self.limiter = Limiter(
                settings.storage_url or redis_url,
                fallback=settings.fallback,
                deny_retry_after=settings.deny_retry_after,
                counter_ttl=settings.counter_ttl,
                clock=clock,
            )
        #: Whether the limit's script may publish admitted jobs itself (same Redis).
        self.fused = self.limiter is not None and self.limiter.url == broker_url
        self.overload: OverloadGate | None = None
        if settings.overload_bounded:
            import redis

            self.overload = OverloadGate(
                redis.Redis.from_url(redis_url),
                queues,
                max_backlog=settings.overload_backlog,
                max_age=settings.overload_age,
                admit_priority=settings.overload_admit_priority,
                refresh_s=settings.overload_refresh_ms / 1000,
                retry_after=settings.overload_retry_after,
                counter_ttl=settings.counter_ttl,
                clock=clock,
            )

    def publish(
        self, jobs: PreparedJobs, client_id: str | None, publisher: Publisher
    ) -> list[bool]:
        """Admit ``jobs`` and publish them: in the limit's own script when it can (a Redis
        broker that is the limits' storage, no keyed job), else with ``publisher``.

        Raises:
            See :meth:`admit`; nothing was published.
        """
        push = None
        if self.fused and not jobs.keyed and isinstance(publisher, RedisPublisher):
            redis_publisher = publisher

            def push() -> Sequence[tuple[str, Sequence[bytes | str]]]:
                batch = encode(jobs, client_id)
                redis_publisher.before_publish(batch.job_ids)
                return push_groups(batch.lists, batch.envelopes)

        if self.admit(jobs.queues, jobs.priorities, client_id, push):
            return [True] * len(jobs)
        return publisher.publish(jobs, client_id)

    @property
    def active(self) -> bool:
        """Whether any check is configured (else the client skips the gate)."""
        return self.limiter is not None or self.overload is not None

    def policy_for(self, client_id: str) -> Policy | None:
        """``client_id``'s enqueue limit (parsed once per table entry)."""
        entry = client_id if client_id in self.table else ANY_CLIENT
        try:
            return self._policies[entry]
        except KeyError:
            policy = self._policies[entry] = client_policy(self.table, client_id)
            return policy

    def admit(
        self,
        queues: Sequence[str],
        priorities: Sequence[int],
        client_id: str | None,
        push: Callable[[], Sequence[tuple[str, Sequence[bytes | str]]]] | None = None,
    ) -> bool:
        """Admit a batch (one job for ``enqueue``) or refuse it whole.

        Args:
            push: The batch's LPUSHes, when the broker is the limits' Redis: the limit's
                script then publishes the batch itself, in the same round trip.

        Returns:
            Whether the batch was published here (else the caller publishes it).

        Raises:
            Overloaded: a job below the priority bar goes to an overloaded queue.
            RateLimited: the client is over its enqueue limit.
            BatchTooLarge: the batch exceeds the limit's burst.
        """
        if self.overload is not None:
            self.overload.admit(queues, priorities)
        if self.limiter is None or client_id is None:
            return False
        policy = self.policy_for(client_id)
        if policy is None:
            return False
        cost = len(queues)
        if cost > policy.max_cost:
            raise BatchTooLarge(
                f"a batch of {cost} jobs exceeds client {client_id!r}'s burst of "
                f"{policy.max_cost}; split it"
            )
        limits = self._limits.get(client_id)
        if limits is None:
            if len(self._limits) >= LIMITS_CACHE_SIZE:
                self._limits.clear()
            limits = self._limits[client_id] = [Limit(f"client:{client_id}", policy)]
        verdict = self.limiter.check(limits, cost=cost, push=push() if push else ())
        if not verdict.admitted:
            raise RateLimited(verdict.wait, f"client:{client_id}")
        return verdict.pushed
