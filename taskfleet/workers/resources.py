"""Per-process connection pools: one Redis pool and one SQLAlchemy engine per process.

Pools must not cross a fork (a socket shared by two processes interleaves their bytes), so
each process builds its own on first use and the worker signals open and close them.

The engine is built when first asked for: only the result persister (and the few jobs that
read Postgres) use it, so a worker process that never does loads neither SQLAlchemy nor
psycopg.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis

from taskfleet.config import Settings, resolve_services
from taskfleet.workers.capacity import redis_pool_cap

if TYPE_CHECKING:
    from sqlalchemy import Engine


@dataclass
class ProcessResources:
    """Connections owned by one process: a Redis pool, and an engine built on first use."""

    pid: int
    redis: redis.Redis
    database_url: str
    db_pool_size: int
    closed: bool = field(default=False)
    _engine: Engine | None = field(default=None, repr=False)
    _engine_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def engine(self) -> Engine:
        """This process's SQLAlchemy engine (bounded pool), created on first use."""
        with self._engine_lock:
            if self._engine is None:
                from taskfleet.results.store import make_engine

                self._engine = make_engine(self.database_url, pool_size=self.db_pool_size)
            return self._engine

    def close(self) -> None:
        """Release every connection."""
        if not self.closed:
            self.closed = True
            self.redis.close()
            self.redis.connection_pool.disconnect()
            with self._engine_lock:
                if self._engine is not None:
                    self._engine.dispose()


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
            database_url=urls.database_url,
            db_pool_size=settings.db_pool_size,
        )
        return _current


def close_resources() -> None:
    """Close this process's pools, if it opened any."""
    global _current
    with _lock:
        if _current is not None and _current.pid == os.getpid():
            _current.close()
        _current = None
