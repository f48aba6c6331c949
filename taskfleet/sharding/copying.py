"""Copying and deleting the rows of some logical shards between two shards' primaries.

Rows are read in key order, ``CHUNK_ROWS`` at a time (keyset pagination, so a scan that
deletes as it goes never skips a row), and filtered by logical shard in Python (the hash is
CRC-32 of the key, :func:`taskfleet.sharding.strategies.logical_shard`). A copy is an
upsert that never replaces a newer row, nor a final state with a non-final one, so running
it twice, or after the target was written, is harmless.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Engine, and_, delete, or_, select
from sqlalchemy.dialects.postgresql import insert

from taskfleet.results.store import FINAL_STATES, results_table
from taskfleet.sharding.strategies import logical_shard

#: Rows read (and written) per round trip while copying or deleting.
CHUNK_ROWS = 1000


def _scan(
    engine: Engine, logicals: set[int], columns: Sequence[str]
) -> Iterator[list[dict[str, Any]]]:
    """Rows of ``engine`` whose key is in ``logicals``, in chunks (keyset pagination)."""
    t = results_table
    after = ""
    while True:
        query = select(*(t.c[c] for c in columns)).where(t.c.key > after)
        with engine.connect() as conn:
            rows = conn.execute(query.order_by(t.c.key).limit(CHUNK_ROWS)).mappings().all()
        if not rows:
            return
        after = rows[-1]["key"]
        chosen = [dict(r) for r in rows if logical_shard(r["key"]) in logicals]
        if chosen:
            yield chosen


def copy_rows(source: Engine, target: Engine, logicals: set[int]) -> int:
    """Upsert ``logicals``' rows from ``source`` into ``target``; return how many."""
    t = results_table
    columns = [c.name for c in t.columns]
    copied = 0
    for rows in _scan(source, logicals, columns):
        statement = insert(t).values(rows)
        new = statement.excluded
        statement = statement.on_conflict_do_update(
            index_elements=["key"],
            set_={c: new[c] for c in columns if c != "key"},
            where=and_(
                new.updated_at >= t.c.updated_at,
                or_(t.c.status.is_(None), t.c.status.notin_(FINAL_STATES),
                    new.status.in_(FINAL_STATES)),
            ),
        )  # fmt: skip
        with target.begin() as conn:
            conn.execute(statement)
        copied += len(rows)
    return copied


def delete_rows(source: Engine, logicals: set[int]) -> int:
    """Delete ``logicals``' rows from ``source``; return how many."""
    deleted = 0
    for rows in _scan(source, logicals, ["key"]):
        keys = [r["key"] for r in rows]
        with source.begin() as conn:
            conn.execute(delete(results_table).where(results_table.c.key.in_(keys)))
        deleted += len(keys)
    return deleted
