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

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit

import redis

KEY_PREFIX = "taskfleet:breaker:"
#: Pub/sub channel of breaker events; each message is the key of a breaker that opened or
#: got its first failure in the closed state.
EVENTS_CHANNEL = KEY_PREFIX + "events"
LUA_PATH = Path(__file__).with_name("breaker.lua")
#: Counters every storage keeps per breaker.
COUNTER_NAMES = ("allowed", "rejected", "successes", "failures", "opened")


class StorageError(RuntimeError):
    """The breaker storage is unreachable or failed."""


@dataclass(frozen=True)
class BreakerConfig:
    """When a breaker opens and how it recovers.

    Attributes:
        fail_max: consecutive failures that open it.
        failure_rate: failure ratio over the window that opens it (with ``min_calls``).
        window: sliding window length in seconds (``WINDOW_BUCKETS`` buckets).
        min_calls: calls in the window before the rate counts.
        reset_timeout: seconds open before trial calls are let through.
        half_open_calls: trial calls admitted at once; that many successes close it.
    """

    fail_max: int = 5
    failure_rate: float = 0.5
    window: float = 30.0
    min_calls: int = 10
    reset_timeout: float = 30.0
    half_open_calls: int = 1

    def argv(self) -> list[float | int]:
        """The configuration as Lua arguments."""
        return [
            self.fail_max,
            self.failure_rate,
            self.window,
            self.min_calls,
            self.reset_timeout,
            self.half_open_calls,
        ]


class Pending(NamedTuple):
    """What a process counted locally since its last storage call (sent with the next one)."""

    #: Successes in the closed state not yet recorded.
    successes: int = 0
    #: Calls admitted from the process's lease (counted as allowed).
    admits: int = 0


NOTHING = Pending()


@dataclass(frozen=True)
class Admission:
    """The answer to "may this call go through?"."""

    allowed: bool
    state: str
    trial: bool = False
    retry_at: float = 0.0
    previous: str = ""
    #: Consecutive failures so far (closed state): 0 means a success changes nothing at once.
    fails: int = 0


class BreakerStorage(Protocol):
    """Atomic breaker transitions over some shared state."""

    def acquire(
        self, name: str, config: BreakerConfig, now: float, pending: Pending = NOTHING
    ) -> Admission:
        """Admit or reject one call (may move open -> half_open).

        ``pending``: what the caller counted locally since its last storage call, added
        first (so a healthy call costs at most one round trip, and none under a lease).
        """

    def record(
        self,
        name: str,
        config: BreakerConfig,
        now: float,
        success: bool,
        trial: bool,
        pending: Pending = NOTHING,
    ) -> tuple[str, str]:
        """Record a call's outcome, after the pending counts; returns (before, after) states."""

    def snapshot(self, name: str) -> dict[str, Any]:
        """State and counters, for inspection."""

    def reset(self, name: str) -> None:
        """Forget a breaker (closed, counters zero)."""


WINDOW_BUCKETS = 10


class MemoryStorage:
    """State in this process only (tests, single-process use); same algorithm as the Lua."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, Any]] = {}

    def _get(self, name: str) -> dict[str, Any]:
        return self._data.setdefault(name, {"state": "closed", "fails": 0, "buckets": {}})

    @staticmethod
    def _flush(d: dict[str, Any], config: BreakerConfig, now: float, pending: Pending) -> None:
        ok, admits = pending
        d["n_allowed"] = d.get("n_allowed", 0) + admits
        if ok:
            d["n_successes"] = d.get("n_successes", 0) + ok
            if d["state"] == "closed":
                bucket = int(now // (config.window / WINDOW_BUCKETS))
                d["buckets"].setdefault(bucket, [0, 0])[0] += ok

    def acquire(
        self, name: str, config: BreakerConfig, now: float, pending: Pending = NOTHING
    ) -> Admission:
        with self._lock:
            d = self._get(name)
            previous = d["state"]
            self._flush(d, config, now, pending)
            if d["state"] == "open":
                retry_at = d["opened_at"] + config.reset_timeout
                if now < retry_at:
                    self._count(d, "rejected")
                    return Admission(False, "open", retry_at=retry_at, previous=previous)
                d.update(state="half_open", half_at=now, trials=0, trial_ok=0)
            if d["state"] == "half_open":
                if now >= d["half_at"] + config.reset_timeout:
                    d.update(half_at=now, trials=0)  # trials that never reported
                if d["trials"] >= config.half_open_calls:
                    self._count(d, "rejected")
                    retry_at = d["half_at"] + config.reset_timeout
                    return Admission(False, "half_open", retry_at=retry_at, previous=previous)
                d["trials"] += 1
                self._count(d, "allowed")
                return Admission(True, "half_open", trial=True, previous=previous)
            self._count(d, "allowed")
            return Admission(True, "closed", previous=previous, fails=d["fails"])

    def record(
        self,
        name: str,
        config: BreakerConfig,
        now: float,
        success: bool,
        trial: bool,
        pending: Pending = NOTHING,
    ) -> tuple[str, str]:
        with self._lock:
            d = self._get(name)
            before = d["state"]
            self._flush(d, config, now, pending)
            self._count(d, "successes" if success else "failures")
            if before == "half_open":
                if not success:
                    d.update(state="open", opened_at=now, buckets={}, fails=0)
                    self._count(d, "opened")
                elif trial:
                    d["trial_ok"] += 1
                    if d["trial_ok"] >= config.half_open_calls:
                        d.update(state="closed", fails=0, buckets={})
            elif before == "closed":
                width = config.window / WINDOW_BUCKETS
                bucket = int(now // width)
                buckets: dict[int, list[int]] = d["buckets"]
                for old in [b for b in buckets if b <= bucket - WINDOW_BUCKETS]:
                    del buckets[old]
                calls_fails = buckets.setdefault(bucket, [0, 0])
                calls_fails[0] += 1
                d["fails"] = 0 if success else d["fails"] + 1
                if not success:
                    calls_fails[1] += 1
                    calls = sum(c for c, _ in buckets.values())
                    fails = sum(f for _, f in buckets.values())
                    rate_trips = calls >= config.min_calls and fails >= config.failure_rate * calls
                    if d["fails"] >= config.fail_max or rate_trips:
                        d.update(state="open", opened_at=now, buckets={}, fails=0)
                        self._count(d, "opened")
            return before, d["state"]

    @staticmethod
    def _count(d: dict[str, Any], counter: str) -> None:
        d[f"n_{counter}"] = d.get(f"n_{counter}", 0) + 1

    def snapshot(self, name: str) -> dict[str, Any]:
        with self._lock:
            d = self._get(name)
            return {"state": d["state"]} | {c: d.get(f"n_{c}", 0) for c in COUNTER_NAMES}

    def reset(self, name: str) -> None:
        with self._lock:
            self._data.pop(name, None)


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
