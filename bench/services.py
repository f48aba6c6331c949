"""Where Redis and PostgreSQL are: the configured ones, else the embedded bench stack."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis

if TYPE_CHECKING:
    from taskfleet.devstack import EmbeddedStack

BENCH_STACK_DIR = ".taskfleet/bench-stack"
REDIS_URL_ENV = "TASKFLEET_REDIS_URL"
DATABASE_URL_ENV = "TASKFLEET_DATABASE_URL"
LOOPBACK = "127.0.0.1"
#: The bench's own Redis keeps nothing on disk (see :func:`_without_persistence`).
NO_PERSISTENCE = {"appendonly": "no", "save": ""}

#: One Redis logical database per system, so FLUSHDB never touches a neighbour.
REDIS_DBS = {
    "taskfleet": 1,
    "celery_redis": 2,
    "celery_db": 3,
    "celery_ignore": 4,
    "dramatiq": 5,
    "rq": 6,
    "ceiling": 7,
    "cache": 8,
    "resilience": 9,
    "autoscale_taskfleet": 10,
    "autoscale_celery": 11,
    "taskfleet_per_core": 12,
    "taskfleet_prefork": 13,
    "limits": 14,
    "taskfleet_metrics": 15,
}


@dataclass(frozen=True)
class Services:
    """Base URLs of the services every system uses."""

    redis_url: str
    database_url: str

    def redis_for(self, system: str) -> str:
        """The Redis URL of ``system``'s own logical database.

        Args:
            system: A key of :data:`REDIS_DBS`.

        Returns:
            ``redis://host:port/<db>``.
        """
        parts = urlsplit(self.redis_url)
        return urlunsplit(parts._replace(path=f"/{REDIS_DBS[system]}"))

    @property
    def redis_host_port(self) -> tuple[str, int]:
        """Host and port of Redis (for ``redis-benchmark``)."""
        parts = urlsplit(self.redis_url)
        return parts.hostname or LOOPBACK, parts.port or 6379

    @property
    def libpq_url(self) -> str:
        """The database URL without SQLAlchemy's ``+driver`` (for psycopg)."""
        parts = urlsplit(self.database_url)
        return urlunsplit(parts._replace(scheme="postgresql"))

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL with the psycopg 3 driver named (for SQLAlchemy / Celery)."""
        parts = urlsplit(self.database_url)
        return urlunsplit(parts._replace(scheme="postgresql+psycopg"))


_started: list[EmbeddedStack] = []


@cache
def services() -> Services:
    """Resolve the services once: environment first, embedded stack for what is missing.

    Returns:
        The service URLs.
    """
    redis_url = os.environ.get(REDIS_URL_ENV)
    database_url = os.environ.get(DATABASE_URL_ENV)
    if redis_url is None or database_url is None:
        from taskfleet.devstack import EmbeddedStack

        stack = EmbeddedStack(BENCH_STACK_DIR)
        if not stack.is_running():
            _started.append(stack)  # the bench started it: the bench stops it (stop_started)
        urls = stack.ensure_running()
        if redis_url is None:
            redis_url = urls.redis_url
            _without_persistence(redis_url)
        database_url = database_url or urls.database_url
    return Services(redis_url=redis_url, database_url=database_url)


def stop_started() -> None:
    """Stop the embedded stack if this bench run started it (one already running is kept)."""
    while _started:
        _started.pop().stop()


def _without_persistence(url: str) -> None:
    """Turn off AOF and RDB snapshots on the bench's own embedded Redis.

    Every run's data is flushed anyway, and persistence forks: with the embedded stack's
    ``appendonly yes``, the bench's write rate set off an AOF rewrite about once a minute (44
    rewrites and 30 snapshots in 50 minutes of benchmarking), each a child process keeping one
    of the two cores busy for about a second in the middle of whichever system was being
    measured. A Redis named by ``TASKFLEET_REDIS_URL`` is left as configured.
    """
    client = redis.Redis.from_url(url)
    try:
        for name, value in NO_PERSISTENCE.items():
            client.config_set(name, value)
    finally:
        client.close()


def flush_redis(url: str) -> None:
    """FLUSHDB the logical database of ``url``.

    Args:
        url: A Redis URL including the database number.
    """
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def truncate_tables(*tables: str) -> None:
    """Empty the given tables when they exist.

    Args:
        tables: Table names (constants of this package, never user input).
    """
    with psycopg.connect(services().libpq_url, autocommit=True) as conn:
        for table in tables:
            exists = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
            if exists and exists[0] is not None:
                conn.execute(f"TRUNCATE {table}")


def count_rows(conn: psycopg.Connection, table: str, where: str = "") -> int:
    """``SELECT count(*)`` of a table, 0 when it does not exist yet.

    Args:
        conn: An autocommit connection.
        table: Table name (a constant).
        where: Optional SQL condition (a constant).

    Returns:
        The row count.
    """
    exists = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
    if not exists or exists[0] is None:
        return 0
    sql = f"SELECT count(*) FROM {table}" + (f" WHERE {where}" if where else "")
    row = conn.execute(sql).fetchone()
    return int(row[0]) if row else 0


def server_versions() -> dict[str, str]:
    """Versions of the Redis and PostgreSQL servers in use.

    Returns:
        ``{"redis": ..., "postgres": ...}``.
    """
    client = redis.Redis.from_url(services().redis_url)
    try:
        redis_version = str(client.info("server").get("redis_version", "?"))
    finally:
        client.close()
    with psycopg.connect(services().libpq_url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return {"redis": redis_version, "postgres": str(row[0]) if row else "?"}
