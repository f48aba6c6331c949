"""L3: the ``taskfleet_cache`` table in PostgreSQL (JSONB values, versioned multi-row upserts).

Writes normally arrive through the Redis write-behind stream (``taskfleet.results.persister``
applies them in batches with :func:`apply_ops`); a cache without Redis writes directly.
Each row keeps the version of its last write, ``(ms, seq)`` of the stream entry, and an
upsert only replaces an older version, so batches applied out of order still leave the
last write in place. Deletes are tombstones (NULL value) for the same reason. A value that
jsonb refuses (``\u0000`` in a string, ``NaN``) is kept as text in ``value_text``
(``CacheOp.as_text``); reads return whichever column is set.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from sqlalchemy import Engine, text

from taskfleet.cache.stats import TierStats
from taskfleet.cache.tiers import glob_regex
from taskfleet.config.cache import DEFAULT_L3_TTL_S
from taskfleet.results.store import ensure_schema

#: Tombstones older than this are purged (long enough for any out-of-order batch to land).
TOMBSTONE_RETENTION_S = 3600

Version = tuple[int, int]

UPSERT_SQL = text(
    """
    INSERT INTO taskfleet_cache AS c
        (key, value, value_text, version_ms, version_seq, updated_at, expires_at)
    SELECT k, CAST(v AS jsonb), t, ms, seq, now(),
           CASE WHEN e > 0 THEN now() + make_interval(secs => e) END
    FROM unnest(CAST(:keys AS text[]), CAST(:vals AS text[]), CAST(:texts AS text[]),
                CAST(:ms AS bigint[]), CAST(:seq AS bigint[]), CAST(:exp AS float8[]))
         AS u(k, v, t, ms, seq, e)
    ON CONFLICT (key) DO UPDATE SET
        value = excluded.value, value_text = excluded.value_text,
        version_ms = excluded.version_ms,
        version_seq = excluded.version_seq, updated_at = excluded.updated_at,
        expires_at = excluded.expires_at
    WHERE (excluded.version_ms, excluded.version_seq) >= (c.version_ms, c.version_seq)
    """
)
DELETE_PATTERN_SQL = text(
    """
    UPDATE taskfleet_cache SET value = NULL, value_text = NULL, version_ms = :ms,
        version_seq = :seq, updated_at = now()
    WHERE key ~ :regex AND (value IS NOT NULL OR value_text IS NOT NULL)
      AND (version_ms, version_seq) <= (:ms, :seq)
    """
)
SELECT_SQL = text(
    """
    SELECT key, COALESCE(CAST(value AS text), value_text) AS value FROM taskfleet_cache
    WHERE key = ANY(CAST(:keys AS text[])) AND (value IS NOT NULL OR value_text IS NOT NULL)
      AND (expires_at IS NULL OR expires_at > now())
    """
)
PURGE_SQL = text(
    """
    DELETE FROM taskfleet_cache
    WHERE expires_at <= now()
       OR (value IS NULL AND value_text IS NULL
           AND updated_at < now() - make_interval(secs => :retention))
    """
)


@dataclass(frozen=True)
class CacheOp:
    """One write to apply: ``set`` (value text), ``del`` (tombstone) or ``delpat`` (glob).

    ``as_text``: store the value in ``value_text`` (JSON that jsonb refuses).
    """

    op: str
    key: str
    value: str | None
    expires_in: float
    version: Version
    as_text: bool = False

    def in_text(self) -> CacheOp:
        """The same op, storing its value as text."""
        return replace(self, as_text=True)


def apply_ops(engine: Engine, ops: Sequence[CacheOp]) -> int:
    """Apply ops in order in one transaction: runs of set/del become one multi-row upsert."""
    if not ops:
        return 0
    with engine.begin() as conn:
        run: dict[str, CacheOp] = {}

        def flush() -> None:
            if run:
                rows = list(run.values())
                conn.execute(
                    UPSERT_SQL,
                    {
                        "keys": [r.key for r in rows],
                        "vals": [_value(r, text=False) for r in rows],
                        "texts": [_value(r, text=True) for r in rows],
                        "ms": [r.version[0] for r in rows],
                        "seq": [r.version[1] for r in rows],
                        "exp": [float(r.expires_in) for r in rows],
                    },
                )
                run.clear()

        for op in ops:
            if op.op == "delpat":
                flush()
                conn.execute(
                    DELETE_PATTERN_SQL,
                    {"regex": glob_regex(op.key), "ms": op.version[0], "seq": op.version[1]},
                )
            else:
                run[op.key] = op  # the later op on a key in one run wins
        flush()
    return len(ops)


def _value(op: CacheOp, *, text: bool) -> str | None:
    return op.value if op.op == "set" and op.as_text == text else None


def purge_expired(engine: Engine, retention_s: float = TOMBSTONE_RETENTION_S) -> int:
    """Delete expired rows and old tombstones; return how many rows went."""
    with engine.begin() as conn:
        return int(conn.execute(PURGE_SQL, {"retention": retention_s}).rowcount)


def _now_version() -> Version:
    ns = time.time_ns()
    return ns // 1_000_000, ns % 1_000_000


class PostgresTier:
    """Reads from ``taskfleet_cache``; writes directly only when no Redis buffer is in front."""

    def __init__(self, engine: Engine, *, ttl: float = DEFAULT_L3_TTL_S, name: str = "l3") -> None:
        """Wrap ``engine``; the tables are created on first use."""
        self.engine = engine
        self.ttl = ttl
        self.name = name
        self.stats = TierStats(name)
        self._schema_ready = False

    def _ready(self) -> Engine:
        if not self._schema_ready:
            ensure_schema(self.engine)
            self._schema_ready = True
        return self.engine

    def get_many(self, keys: list[str]) -> dict[str, str]:
        """The text of each present, unexpired key."""
        with self._ready().connect() as conn:
            rows = conn.execute(SELECT_SQL, {"keys": keys}).all()
        return {row.key: row.value for row in rows}

    def _apply(self, ops: list[CacheOp]) -> None:
        self._ready()
        apply_ops(self.engine, ops)

    def set_many(self, items: Mapping[str, str]) -> None:
        """Upsert directly (a cache with no Redis in front)."""
        version = _now_version()
        self._apply([CacheOp("set", k, v, self.ttl, version) for k, v in items.items()])

    def delete(self, keys: list[str]) -> int:
        """Tombstone keys directly."""
        version = _now_version()
        self._apply([CacheOp("del", k, None, self.ttl, version) for k in keys])
        return len(keys)

    def delete_pattern(self, pattern: str) -> int:
        """Tombstone every key matching a Redis-style glob directly."""
        self._apply([CacheOp("delpat", pattern, None, 0, _now_version())])
        return 0

    def clear(self) -> None:
        """Remove every row (tests and benchmarks)."""
        with self._ready().begin() as conn:
            conn.execute(text("TRUNCATE taskfleet_cache"))

    def purge(self) -> int:
        """Delete expired rows and old tombstones."""
        return purge_expired(self._ready())

    def count(self) -> int:
        """Live (non-tombstone, unexpired) rows."""
        with self._ready().connect() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT count(*) FROM taskfleet_cache WHERE (value IS NOT NULL "
                        "OR value_text IS NOT NULL) AND (expires_at IS NULL OR expires_at > now())"
                    )
                ).scalar_one()
            )
