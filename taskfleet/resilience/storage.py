"""Where circuit-breaker state lives: ``memory://`` (one process) or ``redis://`` (the fleet).

Written rather than taken from pybreaker: pybreaker's Redis state reads and then writes in
separate commands (two workers can both open, or both admit a half-open trial), it only
counts consecutive failures (no failure rate over a window, no minimum calls) and admits one
half-open trial. Here each transition is one Lua script (Redis) or one locked step (memory),
implementing the same algorithm, so the whole fleet sees one state and one opening.

Both storages raise :class:`StorageError` (and only that) when the backend is unreachable;
the breaker then follows its configured fallback state. The Redis script also publishes a
breaker's key on ``EVENTS_CHANNEL`` when it starts failing or opens (see
``taskfleet.resilience.runtime.EventFeed``, which ends the processes' admission leases).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis

from taskfleet.resilience.memory_storage import MemoryStorage
from taskfleet.resilience.storage_base import (
    COUNTER_NAMES,
    NOTHING,
    WINDOW_BUCKETS,
    Admission,
    BreakerConfig,
    BreakerStorage,
    Pending,
    StorageError,
)

KEY_PREFIX = "taskfleet:breaker:"
#: Pub/sub channel of breaker events; each message is the key of a breaker that opened or
#: got its first failure in the closed state.
EVENTS_CHANNEL = KEY_PREFIX + "events"
LUA_PATH = Path(__file__).with_name("breaker.lua")


class RedisStorage:
    """State in one Redis hash per breaker, changed only by ``breaker.lua``."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._script = client.register_script(LUA_PATH.read_text())

    def _run(self, *argv: Any, name: str) -> list[Any]:
        try:
            key = KEY_PREFIX + name
            return list(self._script(keys=[key, f"{key}:w"], args=list(argv)))
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise StorageError(f"breaker storage unreachable: {exc}") from exc
        except redis.RedisError as exc:
            raise StorageError(f"breaker storage failed: {exc}") from exc

    def acquire(
        self, name: str, config: BreakerConfig, now: float, pending: Pending = NOTHING
    ) -> Admission:
        reply = self._run(
            "acquire",
            now,
            WINDOW_BUCKETS,
            *config.argv(),
            EVENTS_CHANNEL,
            *pending,
            name=name,
        )
        allowed, state, trial, retry_at, previous = reply[:5]
        return Admission(
            bool(int(allowed)),
            state.decode(),
            bool(int(trial)),
            float(retry_at),
            previous.decode(),
            int(reply[5]) if len(reply) > 5 else 0,
        )

    def record(
        self,
        name: str,
        config: BreakerConfig,
        now: float,
        success: bool,
        trial: bool,
        pending: Pending = NOTHING,
    ) -> tuple[str, str]:
        before, after = self._run(
            "success" if success else "failure",
            now,
            WINDOW_BUCKETS,
            *config.argv(),
            EVENTS_CHANNEL,
            *pending,
            int(trial),
            name=name,
        )
        return before.decode(), after.decode()

    def snapshot(self, name: str) -> dict[str, Any]:
        try:
            raw: dict[bytes, bytes] = self.client.hgetall(KEY_PREFIX + name)  # type: ignore[assignment]
        except redis.RedisError as exc:
            raise StorageError(f"breaker storage unreachable: {exc}") from exc
        data = {k.decode(): v.decode() for k, v in raw.items()}
        return {"state": data.get("state", "closed")} | {
            c: int(data.get(f"n_{c}", 0)) for c in COUNTER_NAMES
        }

    def reset(self, name: str) -> None:
        try:
            self.client.delete(KEY_PREFIX + name, f"{KEY_PREFIX}{name}:w")
        except redis.RedisError as exc:
            raise StorageError(f"breaker storage unreachable: {exc}") from exc


def storage_from_url(url: str, **redis_options: Any) -> BreakerStorage:
    """A storage chosen by URL scheme: ``memory://`` or ``redis://``/``rediss://``.

    Raises:
        ValueError: an unknown scheme.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        return MemoryStorage()
    if scheme in ("redis", "rediss"):
        options = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0} | redis_options
        return RedisStorage(redis.Redis.from_url(url, **options))
    raise ValueError(f"unknown breaker storage scheme {scheme!r} (memory://, redis://)")


#: The storage names, including those of :mod:`taskfleet.resilience.storage_base` that
#: callers import from here.
__all__ = [
    "COUNTER_NAMES",
    "EVENTS_CHANNEL",
    "KEY_PREFIX",
    "LUA_PATH",
    "NOTHING",
    "WINDOW_BUCKETS",
    "Admission",
    "BreakerConfig",
    "BreakerStorage",
    "MemoryStorage",
    "Pending",
    "RedisStorage",
    "StorageError",
    "storage_from_url",
]
