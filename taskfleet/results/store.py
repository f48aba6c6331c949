"""The durable tables in PostgreSQL (SQLAlchemy 2 Core + psycopg 3), written by upsert.

``taskfleet_results`` holds Celery results; ``taskfleet_cache`` is the cache's L3 (see
``taskfleet.cache.l3``), where a NULL value is a tombstone and every row carries the version
(stream entry id) of the write that produced it, so the last write wins in every tier.

Both tables keep a value in ``value`` (jsonb) or, when jsonb refuses JSON that is valid
(``\u0000`` in a string, a lone surrogate, ``NaN``), as its text in ``value_text``; reads
parse whichever is set, so such a result reads back equal.
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
    Text,
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
    Column("value", JSONB, nullable=True),
    Column("value_text", Text, nullable=True),
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
    Column("value_text", Text, nullable=True),
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


#: Columns added since the tables were first created: ``ensure_schema`` adds them to old ones.
TEXT_COLUMNS_SQL = text(
    """
    SELECT table_name, column_name, is_nullable FROM information_schema.columns
    WHERE table_schema = current_schema() AND column_name IN ('value', 'value_text')
      AND table_name IN ('taskfleet_results', 'taskfleet_cache')
    """
)


def ensure_schema(engine: Engine) -> None:
    """Create the results and cache tables if missing; safe to call from many processes at once.

    Tables created by an older version get ``value_text`` and a nullable ``value`` (idempotent;
    the ALTERs run only when something is missing, so a current schema takes no table lock).
    """
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": SCHEMA_LOCK_ID})
        metadata.create_all(conn, checkfirst=True)
        columns = {
            (r.table_name, r.column_name): r.is_nullable for r in conn.execute(TEXT_COLUMNS_SQL)
        }
        for table in ("taskfleet_results", "taskfleet_cache"):
            if (table, "value_text") not in columns:
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS value_text text"))
            if columns.get((table, "value")) == "NO":
                conn.execute(text(f"ALTER TABLE {table} ALTER COLUMN value DROP NOT NULL"))


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
        value_text = NULL, updated_at = excluded.updated_at, expires_at = excluded.expires_at
    WHERE r.status IS NULL OR r.status NOT IN {FINAL_STATES!r}
       OR excluded.status IN {FINAL_STATES!r}
    """  # noqa: S608 - FINAL_STATES is a constant tuple, not input
)
#: The same upsert for JSON that jsonb refuses: the text is kept as is, and id and status
#: (which Postgres cannot read from it) come from the writer.
TEXT_UPSERT_SQL = text(
    f"""
    INSERT INTO taskfleet_results AS r
        (key, task_id, status, value, value_text, updated_at, expires_at)
    VALUES (:key, :task_id, :status, NULL, :value, now(),
            CASE WHEN :expires > 0 THEN now() + make_interval(secs => :expires) END)
    ON CONFLICT (key) DO UPDATE SET
        task_id = excluded.task_id, status = excluded.status, value = NULL,
        value_text = excluded.value_text, updated_at = excluded.updated_at,
        expires_at = excluded.expires_at
    WHERE r.status IS NULL OR r.status NOT IN {FINAL_STATES!r}
       OR excluded.status IN {FINAL_STATES!r}
    """  # noqa: S608 - FINAL_STATES is a constant tuple, not input
)


def latest_per_key(rows: Iterable[ResultRow]) -> list[ResultRow]:
    """The last row of each key, in first-seen key order (the batch's upsert semantics)."""
    latest: dict[str, ResultRow] = {}
    for row in rows:
        latest[row.key] = row
    return list(latest.values())


def upsert_results(engine: Engine, rows: Iterable[ResultRow]) -> int:
    """Upsert rows in one transaction; the last row per key wins within the batch.

    A final state (SUCCESS, FAILURE, REVOKED) is never overwritten by a non-final one, so a
    late duplicate delivery cannot turn a finished job back into PENDING or RETRY.
    """
    latest = latest_per_key(rows)
    if not latest:
        return 0
    params = [{"key": r.key, "value": r.value, "expires": float(r.expires_in or 0)} for r in latest]
    with engine.begin() as conn:
        conn.execute(UPSERT_SQL, params)
    return len(params)


def upsert_result_text(engine: Engine, row: ResultRow) -> None:
    """Upsert one result as text (JSON that jsonb refuses), with the same final-state rule.

    Raises:
        ValueError: the value is not JSON (nothing could read it back).
    """
    meta = json.loads(row.value)
    if not isinstance(meta, dict):
        raise ValueError("a result must be a JSON object")
    task_id, status = meta.get("task_id"), meta.get("status")
    params = {
        "key": row.key,
        "value": row.value,
        "task_id": None if task_id is None else str(task_id),
        "status": None if status is None else str(status),
        "expires": float(row.expires_in or 0),
    }
    with engine.begin() as conn:
        conn.execute(TEXT_UPSERT_SQL, params)


#: Rows deleted per statement by :func:`purge_expired_results` (short transactions, short locks).
PURGE_BATCH = 10_000
#: Expired results past their retention: a batch of them, oldest first (the index on
#: ``expires_at`` finds them).
PURGE_RESULTS_SQL = text(
    """
    DELETE FROM taskfleet_results WHERE key IN (
        SELECT key FROM taskfleet_results WHERE expires_at <= now()
        ORDER BY expires_at LIMIT :batch
    )
    """
)


def purge_expired_results(engine: Engine, batch: int = PURGE_BATCH) -> int:
    """Delete the results whose retention (``expires_at``) has passed; return how many went.

    In batches of ``batch`` rows, each its own transaction, until none is left.
    """
    total = 0
    while True:
        with engine.begin() as conn:
            deleted = int(conn.execute(PURGE_RESULTS_SQL, {"batch": batch}).rowcount)
        total += deleted
        if deleted < batch:
            return total


def fetch_result(engine: Engine, key: str) -> dict[str, Any] | None:
    """The stored meta for ``key`` (from ``value`` or, if kept as text, ``value_text``)."""
    with engine.connect() as conn:
        found = conn.execute(
            select(results_table.c.value, results_table.c.value_text).where(
                results_table.c.key == key
            )
        ).first()
    if found is None:
        return None
    value, value_text = found
    if value is None:
        return None if value_text is None else json.loads(value_text)
    return value if isinstance(value, dict) else json.loads(value)
