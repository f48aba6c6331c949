"""Per-process state of the resilience layer: settings, Redis clients, breakers, events.

Rebuilt after a fork (a socket must not be shared by two processes), like
``taskfleet.workers.resources``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

from redis import Redis, RedisError

from taskfleet.config import Settings, get_settings, resolve_services
from taskfleet.config.resilience import ResilienceSettings, get_resilience_settings
from taskfleet.resilience.breaker import CircuitBreaker, Listener
from taskfleet.resilience.storage import (
    EVENTS_CHANNEL,
    KEY_PREFIX,
    BreakerConfig,
    BreakerStorage,
    RedisStorage,
    storage_from_url,
)
from taskfleet.routing.topology import Topology
from taskfleet.workers.capacity import redis_pool_cap

log = logging.getLogger(__name__)
ATTEMPTS_PREFIX = "taskfleet:attempts:"
DELIVERIES_PREFIX = "taskfleet:deliveries:"
#: How long the event feed waits for a message before checking whether it was stopped.
FEED_POLL_S = 0.25
#: Pause before subscribing again after losing Redis (doubles up to ``FEED_RETRY_MAX_S``).
FEED_RETRY_S, FEED_RETRY_MAX_S = 0.1, 5.0


class EventFeed:
    """Breaker events of the whole fleet, followed by one subscriber thread (see ``breaker``).

    ``epoch(name)`` is ``None`` until the subscription is confirmed; then it changes whenever
    ``name`` starts failing or opens anywhere, and for every name whenever the subscription
    drops or comes back (events may have been missed in between). A lease taken at one
    epoch is good only while the epoch holds. A forked child's copy never reports an epoch.
    """

    def __init__(self, client: Redis, channel: str = EVENTS_CHANNEL) -> None:
        self._client = client
        self._channel = channel
        self._events: dict[str, int] = {}
        self._resets = 0
        self._live = False
        self._stop = threading.Event()
        _FEEDS.add(self)
        self._thread = threading.Thread(
            target=self._follow, name="taskfleet-breaker-events", daemon=True
        )
        self._thread.start()

    def epoch(self, name: str) -> int | None:
        """Changes on every event for ``name`` and every (re)subscription; None while deaf."""
        if not self._live:
            return None
        return self._resets + self._events.get(name, 0)  # both only grow: any change shows

    def _deaf(self) -> None:
        self._resets += 1
        self._live = False

    def _follow(self) -> None:
        pause = FEED_RETRY_S
        while not self._stop.is_set():
            pubsub = self._client.pubsub()
            try:
                pubsub.subscribe(self._channel)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=FEED_POLL_S)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":  # also after a silent reconnect
                        self._resets += 1
                        self._live = True
                        pause = FEED_RETRY_S
                    elif message["type"] == "message":
                        name = message["data"].decode()[len(KEY_PREFIX) :]
                        self._events[name] = self._events.get(name, 0) + 1
            except (RedisError, OSError) as exc:
                if self._live:  # once per break
                    log.warning("breaker events: %s; no leases until subscribed again", exc)
            finally:
                self._deaf()
                with contextlib.suppress(RedisError, OSError):
                    pubsub.close()
            self._stop.wait(pause)
            pause = min(pause * 2, FEED_RETRY_MAX_S)

    def stop(self, timeout: float = FEED_POLL_S * 2) -> None:
        """Stop following (leases end) and wait for the thread."""
        self._stop.set()
        self._deaf()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)


_FEEDS: weakref.WeakSet[EventFeed] = weakref.WeakSet()


def _deafen_after_fork() -> None:
    """A feed's thread does not survive a fork: a child's copies must vouch for no lease."""
    for feed in list(_FEEDS):
        feed._deaf()


os.register_at_fork(after_in_child=_deafen_after_fork)


@dataclass(frozen=True)
class BreakerSpec:
    """How a named breaker behaves (declared once, used by every task naming it)."""

    config: BreakerConfig = field(default_factory=BreakerConfig)
    fallback: Any = None
    failure_types: tuple[type[BaseException], ...] = (Exception,)
    listeners: tuple[Listener, ...] = ()


#: Breaker name -> spec; a task may name a breaker that is not declared (defaults apply).
BREAKER_SPECS: dict[str, BreakerSpec] = {}


def declare_breaker(name: str, spec: BreakerSpec | None = None, **fields: Any) -> BreakerSpec:
    """Declare (or redeclare) breaker ``name``; keyword fields build the spec."""
    BREAKER_SPECS[name] = spec or BreakerSpec(**fields)
    return BREAKER_SPECS[name]


@dataclass
class Runtime:
    """What the middleware and consumer hooks need in one process."""

    settings: Settings
    resilience: ResilienceSettings
    topology: Topology
    redis: Redis
    broker_redis: Redis | None
    storage: BreakerStorage
    breakers: dict[str, CircuitBreaker] = field(default_factory=dict)
    pid: int = field(default_factory=os.getpid)
    feed: EventFeed | None = None

    def event_feed(self) -> EventFeed | None:
        """The breaker event feed (started on first use), if leases are on and state is Redis."""
        lease_on = self.resilience.breaker_lease > 0
        if self.feed is None and lease_on and isinstance(self.storage, RedisStorage):
            self.feed = EventFeed(self.storage.client)
        return self.feed

    def breaker(self, name: str) -> CircuitBreaker:
        """The process's breaker object for ``name`` (state is in the shared storage)."""
        found = self.breakers.get(name)
        if found is None:
            spec = BREAKER_SPECS.get(name, BreakerSpec())
            found = CircuitBreaker(
                name,
                self.storage,
                spec.config,
                fallback=spec.fallback,
                failure_types=spec.failure_types,
                storage_fallback=self.resilience.breaker_storage_fallback,
                listeners=list(spec.listeners),
                lease_s=self.resilience.breaker_lease,
                feed=self.event_feed(),
            )
            self.breakers[name] = found
        return found

    def dlq_for_queue(self, queue: str | None) -> str:
        """The dead-letter queue for a message that arrived on ``queue``.

        Messages from Celery's default inbox (served by the I/O pool) go to the I/O pool's.
        """
        if queue in (self.topology.cpu_queue, self.topology.io_queue):
            return self.topology.dlq_for(queue)
        return self.topology.dlq_for(self.topology.io_queue)

    @property
    def dead_letter_redis(self) -> Redis:
        """Where Redis DLQ lists live: the broker's Redis."""
        return self.broker_redis if self.broker_redis is not None else self.redis


_lock = threading.Lock()
_current: Runtime | None = None


def build_runtime(settings: Settings, resilience: ResilienceSettings | None = None) -> Runtime:
    """A fresh runtime for ``settings``."""
    resilience = resilience or get_resilience_settings()
    urls = resolve_services(settings)
    cap = redis_pool_cap(settings.redis_pool_size)
    client = Redis.from_url(urls.redis_url, max_connections=cap)
    broker = (
        Redis.from_url(urls.broker_url, max_connections=cap) if settings.broker_is_redis else None
    )
    storage = storage_from_url(resilience.breaker_storage_url or urls.redis_url)
    return Runtime(settings, resilience, Topology.from_settings(settings), client, broker, storage)


def runtime() -> Runtime:
    """This process's runtime, for the taskfleet app's settings (built on first use)."""
    global _current
    current = _current
    if current is not None and current.pid == os.getpid():
        return current
    with _lock:
        if _current is None or _current.pid != os.getpid():
            # The worker's app (``taskfleet.tasks.job_app``) holds no settings of its own:
            # its settings, like every producer's default, are the process-wide ones.
            _current = build_runtime(get_settings())
        return _current


def attempt_info(client: Redis, job_id: str) -> dict[str, Any]:
    """A job's failed attempts so far, its last error and its next try time (empty if none)."""
    raw: dict[bytes, bytes] = client.hgetall(ATTEMPTS_PREFIX + job_id)  # type: ignore[assignment]
    data = {k.decode(): v.decode() for k, v in raw.items()}
    out: dict[str, Any] = {}
    if "attempts" in data:
        out["attempts"] = int(data["attempts"])
    for name in ("first_at", "next_try_at"):
        if name in data:
            out[name] = float(data[name])
    if "last_error" in data:
        out["last_error"] = data["last_error"]
    return out
