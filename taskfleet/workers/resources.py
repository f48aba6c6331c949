"""Per-process connection pools: one Redis pool and one SQLAlchemy engine per process.

Pools must not cross a fork (a socket shared by two processes interleaves their bytes), so
each process builds its own on first use and the worker signals open and close them.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

import redis
from sqlalchemy import Engine

from taskfleet.config import Settings, resolve_services
from taskfleet.results.store import make_engine
from taskfleet.workers.capacity import redis_pool_cap


@dataclass
class ProcessResources:
    """Connections owned by one process."""

    pid: int
    redis: redis.Redis
    engine: Engine
    closed: bool = field(default=False)

    def close(self) -> None:
        """Release every connection."""
        if not self.closed:
            self.closed = True
            self.redis.close()
            self.redis.connection_pool.disconnect()
            self.engine.dispose()


_lock = threading.Lock()
_current: ProcessResources | None = None


def open_resources(settings: Settings) -> ProcessResources:
    """This process's pools, created on first call (and again after a fork)."""
    global _current
    with _lock:
        if _current is not None and _current.pid == os.getpid() and not _current.closed:
            return _current
        urls = resolve_services(settings)
        _current = ProcessResources(
            pid=os.getpid(),
            redis=redis.Redis.from_url(
                urls.redis_url, max_connections=redis_pool_cap(settings.redis_pool_size)
            ),
            engine=make_engine(urls.database_url, pool_size=settings.db_pool_size),
        )
        return _current


def close_resources() -> None:
    """Close this process's pools, if it opened any."""
    global _current
    with _lock:
        if _current is not None and _current.pid == os.getpid():
            _current.close()
        _current = None
