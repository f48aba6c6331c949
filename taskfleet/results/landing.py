"""Land a batch in Postgres even when some of its rows are refused.

The batch goes as one multi-row upsert (the fast path). When Postgres refuses it because of
a row (:func:`taskfleet.results.pgerrors.is_row_error`), the batch is bisected, each half in
its own transaction, until the refused rows stand alone; every other row lands in the same
cycle, at the cost of about ``2 * log2(batch)`` extra statements per refused row. A refused
row is then stored as text (``value_text``): that keeps everything valid JSON allows, e.g.
``\\u0000`` in a string, which jsonb refuses. Rows whose text also fails, that are not JSON,
or that are over the size limit are returned as :class:`Refused` for the caller to
quarantine. Errors that are not about a row (connection lost, server restarting) propagate,
so the caller retries the whole batch later (upserts are idempotent).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import Engine

from taskfleet.cache.l3 import CacheOp, apply_ops
from taskfleet.results.pgerrors import is_row_error, reason_of
from taskfleet.results.store import ResultRow, latest_per_key, upsert_result_text, upsert_results

#: How ``\u0000`` appears in JSON text: jsonb refuses it, so such rows go as text directly.
NUL_ESCAPE = "\\u0000"
#: UTF-8 takes at most this many bytes per character (so short strings skip encoding).
MAX_UTF8_BYTES_PER_CHAR = 4

T = TypeVar("T")


@dataclass(frozen=True)
class Refused:
    """A row that cannot be stored at all, and why."""

    item: ResultRow | CacheOp
    reason: str
    category: str  # "oversize" or "refused"


@dataclass
class Landing:
    """What became of a batch: rows written (``as_text``: of which as text) and refused."""

    written: int = 0
    as_text: list[str] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)


def oversize(value: str | None, max_bytes: int) -> bool:
    """Whether ``value`` takes more than ``max_bytes`` in UTF-8."""
    if value is None or len(value) * MAX_UTF8_BYTES_PER_CHAR <= max_bytes:
        return False
    return len(value) > max_bytes or len(value.encode("utf-8", "surrogatepass")) > max_bytes


def bisect(items: Sequence[T], write: Callable[[Sequence[T]], object]) -> list[tuple[T, Exception]]:
    """Write ``items``; on a row error, write each half separately, down to single items.

    Returns:
        The items refused on their own, each with its error (everything else was written).

    Raises:
        Exception: any error that is not about a row, as raised by ``write``.
    """
    if not items:
        return []
    try:
        write(items)
    except Exception as exc:
        if not is_row_error(exc):
            raise
        if len(items) == 1:
            return [(items[0], exc)]
        middle = len(items) // 2
        return bisect(items[:middle], write) + bisect(items[middle:], write)
    return []


def _too_big(max_bytes: int) -> str:
    return (
        f"over the persistence size limit of {max_bytes} bytes (TASKFLEET_CACHE_PERSIST_MAX_BYTES)"
    )


def land_results(engine: Engine, rows: Sequence[ResultRow], *, max_bytes: int) -> Landing:
    """Upsert results; refused ones are stored as text, or returned as :class:`Refused`."""
    landing = Landing()
    fast: list[ResultRow] = []
    as_text: list[tuple[ResultRow, str]] = []
    for row in latest_per_key(rows):
        if oversize(row.value, max_bytes):
            landing.refused.append(Refused(row, _too_big(max_bytes), "oversize"))
        elif NUL_ESCAPE in row.value:
            as_text.append((row, "jsonb refuses \\u0000"))
        else:
            fast.append(row)
    failed = bisect(fast, lambda chunk: upsert_results(engine, chunk))
    landing.written += len(fast) - len(failed)
    as_text.extend((row, reason_of(exc)) for row, exc in failed)
    for row, jsonb_reason in as_text:
        try:
            upsert_result_text(engine, row)
        except Exception as exc:
            if not is_row_error(exc):
                raise
            reason = f"{jsonb_reason}; as text: {reason_of(exc)}"
            landing.refused.append(Refused(row, reason, "refused"))
        else:
            landing.written += 1
            landing.as_text.append(row.key)
    return landing


def land_ops(engine: Engine, ops: Sequence[CacheOp], *, max_bytes: int) -> Landing:
    """Apply cache ops in order; the same treatment as :func:`land_results`."""
    landing = Landing()
    ready: list[CacheOp] = []
    for op in ops:
        if oversize(op.value, max_bytes):
            landing.refused.append(Refused(op, _too_big(max_bytes), "oversize"))
        else:
            ready.append(op.in_text() if op.value and NUL_ESCAPE in op.value else op)
    failed = bisect(ready, lambda chunk: apply_ops(engine, chunk))
    landing.written += len(ready) - len(failed)
    refused_now = {id(op) for op, _ in failed}
    landing.as_text.extend(op.key for op in ready if op.as_text and id(op) not in refused_now)
    for op, exc in failed:
        if op.value is None or op.as_text:
            landing.refused.append(Refused(op, reason_of(exc), "refused"))
            continue
        retried = bisect([op.in_text()], lambda chunk: apply_ops(engine, chunk))
        if retried:
            reason = f"{reason_of(exc)}; as text: {reason_of(retried[0][1])}"
            landing.refused.append(Refused(op, reason, "refused"))
        else:
            landing.written += 1
            landing.as_text.append(op.key)
    return landing
