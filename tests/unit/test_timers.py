"""Cancelled timers leave the event loop's heap (``taskfleet.workers.timers``)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from kombu.asynchronous import Hub
from kombu.asynchronous.timer import Timer

from taskfleet.workers.timers import PURGE_INTERVAL_S, PurgeCancelledTimers, purge_cancelled


def _noop(*_: Any) -> None:
    """A timer's callback."""


def test_cancelled_entries_are_removed_and_live_ones_keep_their_order() -> None:
    timer = Timer()
    entries = [timer.call_after(300 + i, _noop, (i,)) for i in range(100)]
    for entry in entries[::2]:
        entry.cancel()
    heap = timer._queue

    assert purge_cancelled(timer) == 50

    assert timer._queue is heap  # in place: the running iterator holds this list
    assert len(timer) == 50
    assert [item.entry for item in timer.queue] == entries[1::2]


def test_nothing_to_remove_leaves_the_heap_alone() -> None:
    timer = Timer()
    timer.call_after(300, _noop)

    assert purge_cancelled(timer) == 0
    assert len(timer) == 1


def test_the_step_purges_on_the_hub_and_only_under_an_event_loop() -> None:
    hub = Hub(Timer())
    try:
        step = PurgeCancelledTimers(SimpleNamespace())
        assert not step.include_if(SimpleNamespace(use_eventloop=False))
        assert step.include_if(SimpleNamespace(use_eventloop=True))
        for i in range(10):
            hub.call_later(300 + i, _noop).cancel()

        step.start(SimpleNamespace(hub=hub))

        (purge,) = [item for item in hub.timer.queue if not item.entry.canceled]
        assert purge.eta - hub.timer._queue[0].eta < PURGE_INTERVAL_S + 1  # due first
        purge.entry()
        assert not any(item.entry.canceled for item in hub.timer._queue)
        assert len(hub.timer) == 2  # the purge (as the loop would run it) and its next turn
    finally:
        hub.close()
