"""Which Postgres errors are about a row (never retry it as is) and which are worth retrying.

A batch upsert fails for one of two kinds of reasons:

* **the data**: Postgres (or psycopg, before sending) refuses a value: ``\\u0000`` in jsonb,
  a NUL byte in text, a number out of range, a constraint, a value over a size limit.
  Retrying the same row gives the same error forever, so the persister finds the row and
  stores it another way or quarantines it (:mod:`taskfleet.results.landing`).
* **the server or the connection**: refused, reset, restarted, out of resources, a
  deadlock, a missing table. Nothing is wrong with the rows: retry with backoff.

psycopg's classes decide (``DataError``, ``IntegrityError`` and ``ProgrammingError`` are the
row's; ``OperationalError`` and the rest are transient), refined by SQLSTATE: ``54``
(program limit exceeded, e.g. a jsonb too large) is an ``OperationalError`` but about the
row, and class ``42`` (syntax error or access rule violation: a missing table or column,
no privilege, a bug in a statement) is a ``ProgrammingError`` but about the database or
the code, never one row's data. It is retried with backoff and logged, so a missing table
or a broken deploy never quarantines every result; it is fixed and the backlog lands.
"""

from __future__ import annotations

import psycopg
from sqlalchemy.exc import DBAPIError, StatementError

#: SQLSTATE classes whose errors are caused by the row's data.
ROW_STATE_CLASSES = frozenset({"22", "23", "54"})
#: SQLSTATE class about the database or the statement, not the row (undefined table...).
SCHEMA_STATE_CLASS = "42"
ROW_ERROR_CLASSES = (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError)
#: Longest reason kept from an error message (first line only).
MAX_REASON_CHARS = 300


def _driver_error(exc: BaseException) -> BaseException:
    """What SQLAlchemy wrapped: the driver's error, or one raised binding a parameter."""
    orig = exc.orig if isinstance(exc, StatementError) else None
    return orig if isinstance(orig, BaseException) else exc


def is_row_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a permanent error caused by the data of a row in the statement.

    Args:
        exc: what an upsert raised (SQLAlchemy's wrapper, a psycopg error, or ``ValueError``
            for a value that is not JSON at all).

    Returns:
        True when retrying the same rows would fail the same way.
    """
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return False
    orig = _driver_error(exc)
    if isinstance(orig, ValueError):  # not JSON (json.loads), or a parameter that cannot bind
        return True
    state = getattr(orig, "sqlstate", None) or ""
    if state[:2] == SCHEMA_STATE_CLASS:
        return False
    if state[:2] in ROW_STATE_CLASSES:
        return True
    return isinstance(orig, ROW_ERROR_CLASSES)


def reason_of(exc: BaseException) -> str:
    """A one-line reason for a refused row: the error's class, SQLSTATE and first line."""
    orig = _driver_error(exc)
    state = getattr(orig, "sqlstate", None)
    first = (str(orig).strip().splitlines() or [""])[0][:MAX_REASON_CHARS]
    return f"{type(orig).__name__}{f' [{state}]' if state else ''}: {first}"
