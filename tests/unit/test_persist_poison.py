"""Poison-row handling without servers: error classes, bisection, size limit, backlog wording."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
import pytest
from psycopg import errors
from sqlalchemy.exc import DBAPIError, OperationalError

from taskfleet.config import ConfigError
from taskfleet.config.cache import (
    DEFAULT_PERSIST_MAX_BYTES,
    DEFAULT_PERSIST_STREAM_MAXLEN,
    load_cache_settings,
)
from taskfleet.results.backlog import StreamHealth
from taskfleet.results.landing import bisect, oversize
from taskfleet.results.pgerrors import is_row_error, reason_of
from taskfleet.results.quarantine import KIND_CACHE, KIND_RESULT, record_from_entry


def _wrapped(orig: Exception) -> DBAPIError:
    return DBAPIError.instance("INSERT ...", {}, orig, psycopg.Error)


@pytest.mark.parametrize(
    "orig",
    [
        errors.UntranslatableCharacter("unsupported Unicode escape sequence"),  # \u0000
        errors.NumericValueOutOfRange("value overflows numeric format"),
        errors.InvalidTextRepresentation("invalid input syntax for type json"),
        errors.NotNullViolation("null value in column"),
        errors.ProgramLimitExceeded("total size of jsonb array elements exceeds the maximum"),
        psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"),
        ValueError("Expecting value"),
    ],
)
def test_errors_caused_by_a_row_are_row_errors(orig: Exception) -> None:
    assert is_row_error(_wrapped(orig))
    assert is_row_error(orig)


@pytest.mark.parametrize(
    "orig",
    [
        psycopg.OperationalError("connection failed: Connection refused"),
        errors.AdminShutdown("terminating connection due to administrator command"),
        errors.CannotConnectNow("the database system is starting up"),
        errors.DeadlockDetected("deadlock detected"),
        errors.UndefinedTable('relation "taskfleet_results" does not exist'),
        errors.InsufficientPrivilege("permission denied for table taskfleet_results"),
        errors.SyntaxError("syntax error at or near"),  # a bug: never quarantine every row
        psycopg.InterfaceError("the connection is closed"),
    ],
)
def test_server_and_schema_errors_are_retried_not_quarantined(orig: Exception) -> None:
    assert not is_row_error(_wrapped(orig))


def test_an_invalidated_connection_is_never_a_row_error() -> None:
    exc = OperationalError("SELECT 1", {}, errors.DataCorrupted("x"), connection_invalidated=True)
    assert not is_row_error(exc)


def test_reason_names_the_class_state_and_first_line() -> None:
    exc = _wrapped(errors.UntranslatableCharacter("unsupported escape\nDETAIL: more"))
    assert reason_of(exc) == "UntranslatableCharacter [22P05]: unsupported escape"


class Refusing:
    """A writer that refuses any chunk holding a bad item, and counts its statements."""

    def __init__(self, bad: set[int], error: Exception) -> None:
        self.bad, self.error, self.written, self.calls = bad, error, [], 0

    def __call__(self, chunk: Sequence[int]) -> None:
        self.calls += 1
        if self.bad & set(chunk):
            raise self.error
        self.written.extend(chunk)


def test_bisect_finds_each_bad_row_and_writes_all_others() -> None:
    writer = Refusing({7, 300}, _wrapped(errors.UntranslatableCharacter("\\u0000")))
    refused = bisect(list(range(500)), writer)
    assert [item for item, _ in refused] == [7, 300]
    assert sorted(writer.written) == [i for i in range(500) if i not in (7, 300)]
    assert writer.calls < 40  # about 2 * log2(500) per bad row, not one per row


def test_bisect_raises_errors_that_are_not_about_a_row() -> None:
    writer = Refusing({1}, _wrapped(psycopg.OperationalError("connection refused")))
    with pytest.raises(DBAPIError):
        bisect([0, 1, 2], writer)
    assert writer.calls == 1  # no bisection for an outage


def test_oversize_counts_utf8_bytes() -> None:
    assert not oversize(None, 10)
    assert not oversize("x" * 10, 10)
    assert oversize("x" * 11, 10)
    assert oversize("é" * 6, 10)  # 6 characters, 12 bytes
    assert not oversize("é" * 5, 10)


def test_records_from_stream_entries() -> None:
    record, value = record_from_entry(
        b"1700000000000-0",
        {b"key": b"celery-task-meta-abc", b"value": b'{"x": 1}', b"expires": b"86400"},
        "oversize",
        "too big",
    )
    assert (record.kind, record.task_id, record.size, record.expires) == (
        KIND_RESULT,
        "abc",
        8,
        86400.0,
    )
    assert value == '{"x": 1}'
    assert record.name == "celery-task-meta-abc"
    fields = {b"table": b"cache", b"op": b"set", b"key": b"doc:1", b"value": b"1"}
    cache_record, cache_value = record_from_entry(b"5-1", fields, "refused", "no")
    assert (cache_record.kind, cache_record.name, cache_value) == (KIND_CACHE, "cache:doc:1", None)
    assert cache_record.entry is not None
    assert cache_record.entry["version"] == "5-1"  # a requeued write keeps its version


def test_stream_health_describes_fill_and_ages() -> None:
    health = StreamHealth(
        length=800, pending=20, oldest_entry_age_s=65.0, oldest_pending_age_s=64.5, maxlen=1000
    )
    assert health.fill == 0.8
    assert health.describe() == (
        "stream 800 entries (80% of cap 1000), oldest 65.0s; 20 pending, oldest pending 64.5s"
    )
    empty = StreamHealth(0, 0, None, None, 1000)
    assert "oldest -" in empty.describe()


@pytest.mark.usefixtures("clean_env")
def test_persistence_limits_have_documented_defaults_and_are_validated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load_cache_settings()
    assert settings.persist_max_bytes == DEFAULT_PERSIST_MAX_BYTES == 16 * 1024 * 1024
    assert settings.persist_stream_maxlen == DEFAULT_PERSIST_STREAM_MAXLEN
    monkeypatch.setenv("TASKFLEET_CACHE_PERSIST_MAX_BYTES", "1048576")
    assert load_cache_settings().persist_max_bytes == 1048576
    monkeypatch.setenv("TASKFLEET_CACHE_PERSIST_STREAM_MAXLEN", "3")
    with pytest.raises(ConfigError, match="TASKFLEET_CACHE_PERSIST_STREAM_MAXLEN"):
        load_cache_settings()
