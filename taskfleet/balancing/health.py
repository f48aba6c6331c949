"""Fleet-wide health of a backend set: down marks and ejections in Redis, with TTLs.

Every process reads the same marks, so a backend one worker found dead is skipped by all.
Keys (``<namespace>:<set>:...``), each with a TTL so nothing outlives its reason:

* ``down:<backend>`` -- failed active health checks; renewed by each failed probe, removed
  by passed ones (:mod:`taskfleet.balancing.checker`), else expires after ``down_ttl``;
* ``ejected:<backend>`` -- passive outlier ejection, for base x streak seconds (capped);
* ``streak:<backend>`` -- ejections in a row; forgotten ``ejection_memory`` after the last;
* ``stats:<backend>`` -- a hash of the fleet's counters (:mod:`taskfleet.balancing.stats`).

Every mark is also kept in this process (:class:`~taskfleet.balancing.local.LocalMarks`).
Reads are the union of both, so when Redis is unreachable the board falls back, explicitly
(``mode == "local"``, logged once per outage), to what this process found itself, and tries
Redis again every ``redis_retry`` seconds. Fleet reads are cached for ``health_cache``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from taskfleet.balancing.local import LocalMarks
from taskfleet.config.balancing import BalancingSettings

log = logging.getLogger(__name__)
#: The fleet's counters outlive the last process that adds to them by this long.
STATS_TTL_S = 7 * 24 * 3600
MARKS = ("down", "ejected")


class HealthBoard:
    """Down marks and ejections of one backend set, shared through Redis when it answers."""

    def __init__(
        self,
        set_name: str,
        names: Sequence[str],
        redis_client: redis.Redis | None,
        settings: BalancingSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.names = tuple(names)
        self._redis = redis_client
        self._settings = settings
        self._clock = clock
        self._prefix = f"{settings.namespace}:{set_name}"
        self._local = LocalMarks(clock)
        self._cached: frozenset[str] = frozenset()
        self._cached_at = float("-inf")
        self._redis_down_until = float("-inf") if redis_client is not None else float("inf")
        self._outage = False

    @property
    def mode(self) -> str:
        """``redis`` while the fleet's marks are read, ``local`` while Redis is unreachable."""
        return "local" if self._clock() < self._redis_down_until else "redis"

    def key(self, kind: str, name: str) -> str:
        """The Redis key of ``kind`` (down, ejected, streak, stats) for backend ``name``."""
        return f"{self._prefix}:{kind}:{name}"

    def down(self) -> frozenset[str]:
        """The backends marked down or ejected, by this process or (cached) the fleet."""
        now = self._clock()
        if now - self._cached_at >= self._settings.health_cache:
            keys = [self.key(kind, name) for name in self.names for kind in MARKS]
            values = self._call(lambda r: r.mget(keys))
            if values is not None:
                self._cached = frozenset(
                    name for i, name in enumerate(self.names) if values[2 * i] or values[2 * i + 1]
                )
            else:
                self._cached = frozenset()
            self._cached_at = now
        local = self._local.names(MARKS)
        return self._cached | local if local else self._cached

    def local_until(self, kind: str, name: str) -> float:
        """When this process's ``kind`` mark of ``name`` expires (-inf if it has none)."""
        until = self._local.until((kind, name))
        return float("-inf") if until is None else until

    def mark_down(self, name: str, reason: str) -> None:
        """Mark ``name`` down fleet-wide for ``down_ttl`` (renewed by each failed probe)."""
        self._set("down", name, reason, self._settings.down_ttl)

    def mark_up(self, name: str) -> None:
        """Clear ``name``'s down mark (an ejection keeps running until it expires)."""
        self._local.delete(("down", name))
        self._call(lambda r: r.delete(self.key("down", name)))
        self._cached_at = float("-inf")

    def eject(self, name: str, reason: str) -> float:
        """Eject ``name`` for base x ejections-in-a-row seconds, capped; returns the seconds."""
        memory = self._settings.ejection_memory
        streak = self._call(lambda r: _incr(r, self.key("streak", name), memory))
        local_streak = self._local.incr(("streak", name), memory)
        seconds = min(
            self._settings.ejection_base * int(streak or local_streak),
            self._settings.ejection_max,
        )
        self._set("ejected", name, reason, seconds)
        self.add_counters(name, {"ejections": 1})
        return seconds

    def add_counters(self, name: str, deltas: dict[str, int]) -> None:
        """Add this process's counter growth to the fleet's sums (dropped if Redis is down)."""
        if not deltas:
            return
        key = self.key("stats", name)

        def write(r: redis.Redis) -> None:
            pipe = r.pipeline(transaction=False)
            for field, delta in deltas.items():
                pipe.hincrby(key, field, delta)
            pipe.expire(key, STATS_TTL_S)
            pipe.execute()

        self._call(write)

    def read(self) -> dict[str, dict[str, Any]]:
        """Every backend's marks (reason, seconds left), streak and fleet counters, as data.

        Raises:
            redis.RedisError: Redis is unreachable (the status command reports it).
        """
        if self._redis is None:
            raise redis.ConnectionError("no Redis client")
        pipe = self._redis.pipeline(transaction=False)
        for name in self.names:
            for kind in MARKS:
                pipe.get(self.key(kind, name))
                pipe.pttl(self.key(kind, name))
            pipe.get(self.key("streak", name))
            pipe.hgetall(self.key("stats", name))
        replies = iter(pipe.execute())
        out: dict[str, dict[str, Any]] = {}
        for name in self.names:
            entry: dict[str, Any] = {}
            for kind in MARKS:
                value, pttl = next(replies), next(replies)
                entry[kind] = (
                    {**json.loads(value), "seconds_left": max(pttl, 0) / 1000} if value else None
                )
            entry["ejection_streak"] = int(next(replies) or 0)
            stats = next(replies)
            entry["counters"] = {k.decode(): int(v) for k, v in sorted(stats.items())}
            out[name] = entry
        return out

    def _set(self, kind: str, name: str, reason: str, seconds: float) -> None:
        self._local.set((kind, name), seconds)
        value = json.dumps({"reason": reason, "at": time.time()})
        ttl_ms = max(int(seconds * 1000), 1)
        self._call(lambda r: r.set(self.key(kind, name), value, px=ttl_ms))
        self._cached_at = float("-inf")

    def _call(self, fn: Callable[[redis.Redis], Any]) -> Any:
        """``fn(redis)``, or None while Redis is unreachable (then local state only)."""
        if self._redis is None or self._clock() < self._redis_down_until:
            return None
        try:
            result = fn(self._redis)
        except redis.RedisError as exc:
            self._redis_down_until = self._clock() + self._settings.redis_retry
            if not self._outage:
                self._outage = True
                log.warning(
                    "backend health: Redis unreachable (%s); using this process's marks "
                    "only, trying Redis again every %.0fs",
                    exc,
                    self._settings.redis_retry,
                )
            return None
        if self._outage:
            self._outage = False
            log.warning("backend health: Redis reachable again; fleet-wide marks resumed")
        return result


def _incr(r: redis.Redis, key: str, ttl_s: float) -> int:
    pipe = r.pipeline(transaction=True)
    pipe.incr(key)
    pipe.pexpire(key, int(ttl_s * 1000))
    count, _ = pipe.execute()
    return int(count)
