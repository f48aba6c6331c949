"""Per-process state of the resilience layer: settings, Redis clients and breakers.

Rebuilt after a fork (a socket must not be shared by two processes), like
``taskfleet.workers.resources``.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from taskfleet.config import Settings, resolve_services
from taskfleet.config.resilience import ResilienceSettings, get_resilience_settings
from taskfleet.resilience.breaker import CircuitBreaker, Listener
from taskfleet.resilience.storage import BreakerConfig, BreakerStorage, storage_from_url
from taskfleet.routing.topology import Topology

ATTEMPTS_PREFIX = "taskfleet:attempts:"
DELIVERIES_PREFIX = "taskfleet:deliveries:"


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
    client = Redis.from_url(urls.redis_url, max_connections=settings.redis_pool_size)
    broker = (
        Redis.from_url(urls.broker_url, max_connections=settings.redis_pool_size)
        if settings.broker_is_redis
        else None
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
            from taskfleet.app import app, settings_of

            _current = build_runtime(settings_of(app))
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
