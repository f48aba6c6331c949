"""The fetch script's state machine: when tracking goes on and off, and how long it waits."""

from __future__ import annotations

from typing import Any

import pytest
from redis.connection import Connection

from taskfleet.routing import atomic_fetch, fetch_batch
from taskfleet.routing.atomic_fetch import (
    IDLE_REFETCH_S,
    TRACKING_OFF_AFTER_HITS,
    AtomicFetch,
    tracked_prefixes,
)

WAITER_ID = 42
SOCK, OTHER_SOCK = object(), object()


class _Waiter:
    client_id = WAITER_ID


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _fetch(clock: _Clock) -> AtomicFetch:
    waiter: Any = _Waiter()
    return AtomicFetch("sha", ("unacked", "index", "tags"), True, waiter, clock=clock)


def _prefixes() -> list[str]:
    return ["io", "cpu"]


def test_an_empty_fetch_arms_tracking_then_waits() -> None:
    clock = _Clock()
    fetch = _fetch(clock)
    assert fetch.switches(SOCK, _prefixes) == []
    fetch.answered(False)  # empty, tracking off: fetch again at once, with tracking on
    assert not fetch.waiting()
    on = ("CLIENT", "TRACKING", "ON", "REDIRECT", WAITER_ID, "BCAST")
    assert fetch.switches(SOCK, _prefixes) == [
        ("CLIENT", "TRACKING", "OFF"),
        (*on, "PREFIX", "io", "PREFIX", "cpu", "NOLOOP"),
    ]
    fetch.answered(False)
    assert fetch.waiting()
    clock.now += IDLE_REFETCH_S - 0.01
    assert fetch.waiting()
    clock.now += 0.02
    assert not fetch.waiting()  # the safety refetch


def test_a_notification_ends_the_wait() -> None:
    fetch = _fetch(_Clock())
    fetch.answered(False)
    fetch.switches(SOCK, _prefixes)
    fetch.answered(False)
    assert fetch.waiting()
    fetch.woken()
    assert not fetch.waiting()
    assert fetch.switches(SOCK, _prefixes) == []  # tracking stays on


def test_tracking_goes_off_after_a_run_of_hits() -> None:
    fetch = _fetch(_Clock())
    fetch.answered(False)
    fetch.switches(SOCK, _prefixes)
    for _ in range(TRACKING_OFF_AFTER_HITS - 1):
        fetch.answered(True)
        assert fetch.switches(SOCK, _prefixes) == []
    fetch.answered(True)
    assert fetch.switches(SOCK, _prefixes) == [("CLIENT", "TRACKING", "OFF")]
    assert fetch.switches(SOCK, _prefixes) == []


def test_taking_the_last_message_with_tracking_on_waits_at_once() -> None:
    fetch = _fetch(_Clock())
    fetch.answered(False)
    fetch.switches(SOCK, _prefixes)  # tracking on from this fetch
    fetch.answered(True, drained=True)
    assert fetch.waiting()  # no empty fetch first
    fetch.woken()
    fetch.answered(True, drained=False)
    assert not fetch.waiting()  # more is queued: fetch again


def test_taking_the_last_message_without_tracking_fetches_again() -> None:
    """Without tracking no notification would come: the next fetch finds the lists empty
    and arms it, as before."""
    fetch = _fetch(_Clock())
    fetch.answered(True, drained=True)
    assert not fetch.waiting()
    assert fetch.switches(SOCK, _prefixes) == []


def test_a_new_fetch_connection_is_tracked_again() -> None:
    fetch = _fetch(_Clock())
    fetch.answered(False)
    assert len(fetch.switches(SOCK, _prefixes)) == 2
    assert fetch.switches(OTHER_SOCK, _prefixes)[0] == ("CLIENT", "TRACKING", "OFF")


def test_prefixes_never_overlap() -> None:
    assert tracked_prefixes(["io", "io-high", "cpu", "cpu", "c"]) == ["c", "io"]


def test_the_packed_call_is_what_redis_py_would_send(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(atomic_fetch, "time", lambda: 1234.5)
    connection = Connection()
    keys = ("q", "q\x06\x163")
    got = _fetch(_Clock()).packed_call(connection, ("BRPOP", *keys, 1))
    args = ("EVALSHA", "sha", 5, "unacked", "index", "tags", *keys, repr(1234.5), "1", "1")
    assert got == b"".join(connection.pack_command(*args))


def test_a_batching_call_names_the_most_and_the_short_kinds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(atomic_fetch, "time", lambda: 1234.5)
    sizer = fetch_batch.BatchSizer(8)
    sizer.observe("cpu.noop", 0.0)
    sizer.observe("cpu.checksum", 0.0)
    sizer.observe("cpu.slow", 1.0)
    monkeypatch.setattr(fetch_batch, "_sizer", sizer)
    connection = Connection()
    keys = ("q", "q\x06\x163")
    fetch = _fetch(_Clock())
    for _ in range(2):  # the second from the cached head
        got = fetch.packed_call(connection, ("BRPOP", *keys, 1))
        args = ("EVALSHA", "sha", 5, "unacked", "index", "tags", *keys, repr(1234.5), "1", "8")
        expected = connection.pack_command(*args, "cpu.checksum", "cpu.noop")
        assert got == b"".join(expected)
