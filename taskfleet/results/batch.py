"""One batch of the persistence stream: decode its entries, land them, quarantine the refused.

Entries with ``table=cache`` are writes of the generic cache's L3 (see ``taskfleet.cache.l2``);
the others are results. Both go through :mod:`taskfleet.results.landing`, so a refused row never
stops the rest, and whatever cannot be stored at all is recorded in the quarantine and
logged once (with its job id and reason) here; the caller then acknowledges the whole batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Engine

from taskfleet.cache.l3 import CacheOp
from taskfleet.results.landing import land_ops, land_results
from taskfleet.results.quarantine import Quarantine, record_from_entry
from taskfleet.results.store import ResultRow
from taskfleet.results.stream import CACHE_TABLE, TABLE_FIELD, StreamEntry

CACHE_ENTRY = CACHE_TABLE.encode()
TABLE_KEY = TABLE_FIELD.encode()
MALFORMED = "malformed"
MALFORMED_REASON = "malformed stream entry (missing field or not UTF-8)"

log = logging.getLogger("taskfleet.results.persister")


@dataclass(frozen=True)
class BatchOutcome:
    """Rows written (``as_text``: of which as text) and entries newly quarantined."""

    written: int
    as_text: int
    quarantined: int


def _decode(entry: StreamEntry) -> ResultRow | CacheOp | None:
    entry_id, fields = entry
    try:
        if fields.get(TABLE_KEY) == CACHE_ENTRY:
            # A requeued write keeps the version of its first entry (taskfleet.results.quarantine).
            ms, _, seq = (fields.get(b"version") or entry_id).decode().partition("-")
            raw = fields.get(b"value")
            return CacheOp(
                op=fields[b"op"].decode(),
                key=fields[b"key"].decode(),
                value=raw.decode() if raw is not None else None,
                expires_in=float(fields.get(b"expires") or 0),
                version=(int(ms), int(seq or 0)),
            )
        key = fields[b"key"].decode()
        value = fields[b"value"].decode()
        expires = float(fields[b"expires"]) if fields.get(b"expires") else None
    except (KeyError, ValueError, UnicodeDecodeError):
        return None  # quarantined by the caller
    return ResultRow(key=key, value=value, expires_in=expires)


def write_batch(
    engine: Engine, entries: Sequence[StreamEntry], max_bytes: int, quarantine: Quarantine
) -> BatchOutcome:
    """Land ``entries`` in Postgres; quarantine (and log once) those it cannot store.

    Raises:
        Exception: errors that are not about a row (Postgres down...): retry the batch.
    """
    rows: list[ResultRow] = []
    ops: list[CacheOp] = []
    source: dict[object, StreamEntry] = {}  # result key or op -> its (last) entry
    malformed: list[StreamEntry] = []
    for entry in entries:
        decoded = _decode(entry)
        if isinstance(decoded, ResultRow):
            rows.append(decoded)
            source[decoded.key] = entry
        elif isinstance(decoded, CacheOp):
            ops.append(decoded)
            source[decoded] = entry
        else:
            malformed.append(entry)
    landed = land_results(engine, rows, max_bytes=max_bytes)
    landed_ops = land_ops(engine, ops, max_bytes=max_bytes)
    quarantined = 0
    problems = [(entry, MALFORMED, MALFORMED_REASON) for entry in malformed]
    for refused in landed.refused + landed_ops.refused:
        item = refused.item
        entry = source[item.key if isinstance(item, ResultRow) else item]
        problems.append((entry, refused.category, refused.reason))
    for (entry_id, fields), category, reason in problems:
        record, value = record_from_entry(entry_id, fields, category, reason)
        if category == MALFORMED:
            value = None  # never written back to Redis
        if quarantine.add(record, value):
            quarantined += 1
            log.warning(
                "result persister: quarantined %s (job %s, %d bytes): %s",
                record.name,
                record.task_id or "-",
                record.size,
                record.reason,
            )
    as_text = landed.as_text + landed_ops.as_text
    for key in as_text:
        log.info("result persister: %s stored as text (jsonb refuses it)", key)
    return BatchOutcome(landed.written + landed_ops.written, len(as_text), quarantined)
