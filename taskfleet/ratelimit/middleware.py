"""Rate limits at execution: per job kind (``rate_limit=``) and per client (a settings table).

``job(..., rate_limit="100/s")`` (or a policy object: :class:`TokenBucket`,
:class:`LeakyBucket`, :class:`SlidingWindow`) limits a kind across the whole fleet; it takes
the place of Celery's own ``rate_limit``, which holds per worker process (N processes allow
N times the rate). ``rate_limit_key=fn`` (``fn(args, kwargs) -> str | None``) splits a kind's
limit per key (one bucket per customer, say). ``TASKFLEET_LIMITS_EXECUTION`` limits each
client (the ``taskfleet_client_id`` header, else a ``client_id`` keyword argument, as
``contract.process`` takes) across all its kinds.

A job over a limit is deferred, never failed: it books the next free slot (up to
``TASKFLEET_LIMITS_MAX_DEFER`` seconds ahead; a leaky bucket up to its capacity) and is
re-queued with an ETA at it (:mod:`~taskfleet.ratelimit.deferral`), not counted against the
retry policy's budget. It holds no process while it waits (a worker's timer holds it), and
at its slot it runs without being charged again; a job that misses its slot by more than
``SLOT_LATE_S`` books a new one.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any, ClassVar

from taskfleet.config.limits import LimitSettings, get_limit_settings
from taskfleet.publishing.base import CLIENT_HEADER
from taskfleet.ratelimit.deferral import defer
from taskfleet.ratelimit.enqueue import client_policy
from taskfleet.ratelimit.errors import RateLimited
from taskfleet.ratelimit.limiter import Limit, Limiter
from taskfleet.ratelimit.policies import Policy, policy_from_spec
from taskfleet.ratelimit.store_base import KEY_PREFIX
from taskfleet.tasks.middleware import NOT_HANDLED, Middleware, task_option

if TYPE_CHECKING:
    from celery import Task

#: Where a deferred job's booked slot is kept (``<prefix><job id>``).
SLOT_PREFIX = KEY_PREFIX + "slot:"
#: Shortest deferral (seconds): a refusal whose wait rounds to nothing still leaves the slot.
MIN_DEFER_S = 0.01


class RateLimitMiddleware(Middleware):
    """``rate_limit=`` / ``rate_limit_key=``, and the per-client execution table."""

    options: ClassVar[frozenset[str]] = frozenset({"rate_limit", "rate_limit_key"})
    #: Each in-process retry attempt is charged too (it calls the limited thing again).
    per_attempt: ClassVar[bool] = True

    def __init__(self, settings: LimitSettings | None = None) -> None:
        self._settings = settings
        self._limiter: tuple[int, Limiter] | None = None
        self._lock = threading.Lock()
        self._kind_policies: dict[str, Policy] = {}

    @property
    def settings(self) -> LimitSettings:
        """The limit settings (the process-wide ones unless given)."""
        if self._settings is None:
            self._settings = get_limit_settings()
        return self._settings

    def limiter(self) -> Limiter:
        """This process's limiter (built on first use, again after a fork)."""
        held = self._limiter
        if held is not None and held[0] == os.getpid():
            return held[1]
        with self._lock:
            from taskfleet.config import get_settings, resolve_services

            settings = self.settings
            url = settings.storage_url or resolve_services(get_settings()).redis_url
            limiter = Limiter(
                url,
                fallback=settings.fallback,
                deny_retry_after=settings.deny_retry_after,
                counter_ttl=settings.counter_ttl,
            )
            self._limiter = (os.getpid(), limiter)
            return limiter

    def applies_to(self, task: Task) -> bool:
        """Tasks with a ``rate_limit``, and every task while a client table is configured."""
        return bool(self.settings.execution) or super().applies_to(task)

    def limits_of(self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Limit]:
        """The limits this job is under: its kind's (per key), its client's."""
        limits: list[Limit] = []
        spec = task_option(task, "rate_limit")
        if spec is not None:
            policy = self._kind_policies.get(task.name)
            if policy is None:
                policy = self._kind_policies[task.name] = policy_from_spec(spec)
            scope = f"kind:{task.name}"
            key_fn = task_option(task, "rate_limit_key")
            key = key_fn(args, kwargs) if key_fn is not None else None
            limits.append(Limit(f"{scope}:{key}" if key else scope, policy, stats=scope))
        client_id = getattr(task.request, CLIENT_HEADER, None) or kwargs.get("client_id")
        if client_id is not None and self.settings.execution:
            policy = client_policy(self.settings.execution, str(client_id))
            if policy is not None:
                limits.append(Limit(f"client:{client_id}", policy))
        return limits

    def before_call(self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Admit the job, or defer it to its booked slot (or until one can be booked)."""
        if task.request.is_eager:
            return NOT_HANDLED
        limits = self.limits_of(task, args, kwargs)
        if not limits:
            return NOT_HANDLED
        verdict = self.limiter().check(
            limits,
            context="execution",
            horizon=self.settings.max_defer,
            slot_key=SLOT_PREFIX + str(task.request.id),
        )
        if verdict.admitted and verdict.wait <= 0:
            return NOT_HANDLED
        scope = "+".join(limit.scope for limit in limits)
        wait = max(verdict.wait, MIN_DEFER_S)
        raise defer(task, args, kwargs, wait, RateLimited(verdict.wait, scope))
