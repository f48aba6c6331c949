"""The durable tables in PostgreSQL (SQLAlchemy 2 Core + psycopg 3), written by upsert.

``taskfleet_results`` holds Celery results; ``taskfleet_cache`` is the cache's L3 (see
``taskfleet.cache.l3``), where a NULL value is a tombstone and every row carries the version
(stream entry id) of the write that produced it, so the last write wins in every tier.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Index,
    MetaData,
    String,
    Table,
    create_engine,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

FINAL_STATES = ("SUCCESS", "FAILURE", "REVOKED")
SCHEMA_LOCK_ID = 0x7A5F1EE7  # pg advisory lock serialising CREATE TABLE across processes

metadata = MetaData()
results_table = Table(
    "taskfleet_results",
    metadata,
    Column("key", String, primary_key=True),
    Column("task_id", String, nullable=True),
    Column("status", String, nullable=True),
    Column("value", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
    Column("updated_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Index("ix_taskfleet_results_expires_at", "expires_at"),
)

cache_table = Table(
    "taskfleet_cache",
    metadata,
    Column("key", String, primary_key=True),
    Column("value", JSONB, nullable=True),
    Column("version_ms", BigInteger, nullable=False, server_default="0"),
    Column("version_seq", BigInteger, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
    Column("updated_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Index("ix_taskfleet_cache_expires_at", "expires_at"),
)


@dataclass(frozen=True)
class ResultRow:
    """One result as stored: Celery's key (``celery-task-meta-<id>``) and its JSON meta text."""

    key: str
    value: str
    expires_in: float | None = None


def sqlalchemy_url(url: str) -> str:
    """Make a ``postgresql://`` URL use psycopg 3."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str, pool_size: int = 5) -> Engine:
    """An engine with a bounded, pre-pinged pool."""
    return create_engine(
        sqlalchemy_url(url), pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
    )


def ensure_schema(engine: Engine) -> None:
    """Create the results and cache tables if missing; safe to call from many processes at once."""
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": SCHEMA_LOCK_ID})
        metadata.create_all(conn, checkfirst=True)


#: One statement per row, sent with executemany (psycopg pipelines it). The JSON text goes
#: to Postgres as is; id and status are read from it there, so the writer never parses it.
UPSERT_SQL = text(
    f"""
    INSERT INTO taskfleet_results AS r (key, task_id, status, value, updated_at, expires_at)
    SELECT :key, v->>'task_id', v->>'status', v, now(),
           CASE WHEN :expires > 0 THEN now() + make_interval(secs => :expires) END
    FROM (SELECT CAST(:value AS jsonb) AS v) AS src
    ON CONFLICT (key) DO UPDATE SET
        task_id = excluded.task_id, status = excluded.status, value = excluded.value,
        updated_at = excluded.updated_at, expires_at = excluded.expires_at
    WHERE r.status IS NULL OR r.status NOT IN {FINAL_STATES!r}
       OR excluded.status IN {FINAL_STATES!r}
    """  # noqa: S608 - FINAL_STATES is a constant tuple, not input
)


def upsert_results(engine: Engine, rows: Iterable[ResultRow]) -> int:
    """Upsert rows in one transaction; the last row per key wins within the batch.

    A final state (SUCCESS, FAILURE, REVOKED) is never overwritten by a non-final one, so a
    late duplicate delivery cannot turn a finished job back into PENDING or RETRY.
    """
    latest: dict[str, ResultRow] = {}
    for row in rows:
        latest[row.key] = row
    if not latest:
        return 0
    params = [
        {"key": r.key, "value": r.value, "expires": float(r.expires_in or 0)}
        for r in latest.values()
    ]
    with engine.begin() as conn:
        conn.execute(UPSERT_SQL, params)
    return len(params)


def fetch_result(engine: Engine, key: str) -> dict[str, Any] | None:
    """The stored meta for ``key``, or None."""
    with engine.connect() as conn:
        value = conn.execute(
            select(results_table.c.value).where(results_table.c.key == key)
        ).scalar_one_or_none()
    if value is None:
        return None
    return value if isinstance(value, dict) else json.loads(value)
