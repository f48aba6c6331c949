"""The limiter: checks a call against its limits on the configured storage, or its fallback.

A call names its limits (a scope such as ``client:acme`` or ``kind:cpu.checksum`` and a
policy each). Its GCRA policies (token and leaky buckets) are checked and charged together
in one atomic step (one Lua call on Redis); its sliding windows (``limits``) are hit first,
one call each, so a window may be charged for a call a bucket then refuses (windows then
err on the strict side, never the lenient one).

The storage is chosen by URL scheme (``redis://``, ``rediss://``, ``memory://``). When it is
unreachable the limiter follows its fallback: ``allow``, ``deny`` (refused with
``deny_retry_after``), or ``local`` (the same limits kept in this process).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from taskfleet.ratelimit.errors import LimitStorageError
from taskfleet.ratelimit.memory_store import MemoryGcraStore
from taskfleet.ratelimit.policies import Policy, SlidingWindow
from taskfleet.ratelimit.store_base import (
    ALLOWED,
    KEY_PREFIX,
    REFUSED,
    GcraCall,
    GcraStore,
    Tally,
    Verdict,
)
from taskfleet.ratelimit.window import WindowStore

log = logging.getLogger(__name__)

Fallback = Literal["allow", "deny", "local"]
Context = Literal["enqueue", "execution"]
#: Counter names per context: (admitted now, admitted on a booked slot, refused).
TALLY_NAMES: dict[str, tuple[str, str, str]] = {
    "enqueue": ("allowed", "allowed", "refused"),
    "execution": ("started", "deferred", "deferred"),
}
#: Where each scope's state and counters live (``<prefix><scope>``).
STATE_PREFIX = KEY_PREFIX + "gcra:"
STATS_PREFIX = KEY_PREFIX + "stats:"
#: Calls kept for reuse per limiter (cleared when full: a plan is cheap to rebuild).
PLAN_CACHE_SIZE = 4096
#: A storage outage is logged at most this often (seconds).
OUTAGE_LOG_INTERVAL_S = 10.0
#: Connect timeout of the limiter's own Redis connection: an unreachable Redis is an outage
#: (replies have no timeout, as the publisher's: a call that publishes may take a while).
CONNECT_TIMEOUT_S = 1.0


@dataclass(frozen=True, eq=False)
class Limit:
    """A policy applied under a scope (``client:<id>``, ``kind:<kind>``), counted under
    ``stats`` (default: the scope; a kind split per key is counted once, by kind).

    Compared by identity: a caller that reuses its ``Limit`` objects reuses their call plan.
    """

    scope: str
    policy: Policy
    stats: str = ""


def store_for(url: str) -> GcraStore:
    """The GCRA store a URL names: ``redis://``/``rediss://`` or ``memory://``."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        return MemoryGcraStore()
    if scheme in ("redis", "rediss"):
        import redis

        from taskfleet.ratelimit.redis_store import RedisGcraStore

        client = redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S)
        return RedisGcraStore(client)
    raise ValueError(f"unknown rate-limit storage {url!r}: use redis://, rediss:// or memory://")


class Limiter:
    """Checks calls against limits, fleet-wide when the storage is Redis. Thread-safe."""

    def __init__(
        self,
        url: str,
        *,
        fallback: Fallback = "local",
        deny_retry_after: float = 1.0,
        counter_ttl: int = 7 * 24 * 3600,
        clock: Callable[[], float] = time.time,
        store: GcraStore | None = None,
    ) -> None:
        self.url = url
        self.store = store if store is not None else store_for(url)
        self.windows = WindowStore(url)
        self.fallback = fallback
        self.deny_retry_after = deny_retry_after
        self.counter_ttl = counter_ttl
        self.clock = clock
        self.local = MemoryGcraStore()
        self.local_windows = WindowStore("memory://")
        self._logged_at = -OUTAGE_LOG_INTERVAL_S
        #: Calls built for a set of limits, reused (a client's limit at enqueue, say).
        self._plans: dict[tuple[object, ...], GcraCall] = {}

    def check(
        self,
        limits: Sequence[Limit],
        *,
        cost: int = 1,
        context: Context = "enqueue",
        horizon: float = 0.0,
        slot_key: str = "",
        push: Sequence[tuple[str, Sequence[bytes | str]]] = (),
    ) -> Verdict:
        """Check and charge ``limits`` for ``cost`` units.

        Args:
            horizon: How far ahead (seconds) a GCRA policy without a queue of its own
                (a token bucket) may book a slot; a leaky bucket books up to its capacity.
            slot_key: Where a booking is kept for the caller's next try ("" for none).
            push: Envelopes the Redis store pushes in the same step if admitted
                (``Verdict.pushed``). Such a call has no fallback: a Redis error is raised
                as it is (it may have come after the push, and the broker is down anyway).
        """
        try:
            return self._check(
                self.store, self.windows, limits, cost, context, horizon, slot_key, push
            )
        except LimitStorageError as exc:
            now = time.monotonic()
            if now - self._logged_at >= OUTAGE_LOG_INTERVAL_S:
                self._logged_at = now
                log.warning("rate limits: %s; falling back to %s", exc, self.fallback)
            if self.fallback == "allow":
                return Verdict(ALLOWED)
            if self.fallback == "deny":
                return Verdict(REFUSED, self.deny_retry_after)
            return self._check(
                self.local, self.local_windows, limits, cost, context, horizon, slot_key, ()
            )

    def _check(
        self,
        store: GcraStore,
        windows: WindowStore,
        limits: Sequence[Limit],
        cost: int,
        context: Context,
        horizon: float,
        slot_key: str,
        push: Sequence[tuple[str, Sequence[bytes | str]]],
    ) -> Verdict:
        for limit in limits:
            if isinstance(limit.policy, SlidingWindow):
                verdict = windows.acquire(f"{context}:{limit.scope}", limit.policy, cost)
                if not verdict.admitted:  # counted as refused (a call with no policy)
                    counts_only = self._plan(limits, context, horizon, "", refused=True)
                    store.acquire(counts_only, self.clock(), cost)
                    return verdict
        call = self._plan(limits, context, horizon, slot_key)
        return store.acquire(call, self.clock(), cost, push)

    def _plan(
        self,
        limits: Sequence[Limit],
        context: Context,
        horizon: float,
        slot_key: str,
        *,
        refused: bool = False,
    ) -> GcraCall:
        """The GCRA call of ``limits`` (kept for reuse unless it names a job's slot)."""
        key = (tuple(limits), context, horizon, refused)
        if not slot_key:
            cached = self._plans.get(key)
            if cached is not None:
                return cached
        names = TALLY_NAMES[context]
        stats = [STATS_PREFIX + (limit.stats or limit.scope) for limit in limits]
        if refused:  # a window refused: count it, charge no bucket
            tally = Tally(stats, names[2], names[2], names[2], self.counter_ttl)
            call = GcraCall((), (), 0.0, "", tally)
        else:
            buckets = [limit for limit in limits if not isinstance(limit.policy, SlidingWindow)]
            # A leaky bucket books up to its own queue; a token bucket up to the horizon.
            reach = [horizon if b.policy.queue_s is None else b.policy.queue_s for b in buckets]  # type: ignore[union-attr]
            call = GcraCall(
                keys=[f"{STATE_PREFIX}{context}:{limit.scope}" for limit in buckets],
                policies=[limit.policy for limit in buckets],  # type: ignore[misc]
                horizon=min(reach, default=horizon),
                slot_key=slot_key,
                tally=Tally(stats, *names, self.counter_ttl),
            )
        if not slot_key:
            if len(self._plans) >= PLAN_CACHE_SIZE:
                self._plans.clear()
            self._plans[key] = call
        return call
