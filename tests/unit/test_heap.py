"""Heap settling of worker processes (``taskfleet.workers.heap``)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from taskfleet.config import load_settings
from taskfleet.workers.heap import settle_heap


class _Node:
    """A container that can take part in a reference cycle."""

    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> tuple[_Node, weakref.ref[_Node]]:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return a, weakref.ref(a)


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    """No automatic collection during a test (only the explicit ones), nothing left frozen."""
    gc.unfreeze()
    gc.disable()
    yield
    gc.enable()
    gc.unfreeze()
    gc.collect()


def test_garbage_present_at_settling_is_collected_first() -> None:
    node, ref = _cycle()
    del node
    assert settle_heap() > 0
    assert ref() is None


def test_objects_alive_at_settling_are_skipped_by_later_collections() -> None:
    node, ref = _cycle()
    settle_heap()
    del node  # now cyclic garbage, but frozen: the collector no longer looks at it
    gc.collect()
    assert ref() is not None
    gc.unfreeze()
    gc.collect()
    assert ref() is None


def test_objects_created_after_settling_are_collected_as_usual() -> None:
    settle_heap()
    node, ref = _cycle()
    del node
    gc.collect()
    assert ref() is None


def test_a_forked_child_freezes_without_collecting() -> None:
    """``collect=False``: inherited garbage is frozen, not visited (its pages stay shared)."""
    node, ref = _cycle()
    del node
    assert settle_heap(collect=False) > 0
    assert ref() is not None  # not collected first: frozen as it was
    gc.collect()
    assert ref() is not None  # and later collections skip it
    gc.unfreeze()
    gc.collect()
    assert ref() is None


def test_disabled_settling_leaves_the_collector_alone() -> None:
    node, ref = _cycle()
    del node
    assert settle_heap(enabled=False) == 0
    assert gc.get_freeze_count() == 0
    assert ref() is not None  # nothing was collected on its behalf
    gc.collect()
    assert ref() is None


def test_the_setting_is_on_by_default_and_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TASKFLEET_SETTLE_HEAP", raising=False)
    assert load_settings().settle_heap is True
    monkeypatch.setenv("TASKFLEET_SETTLE_HEAP", "false")
    assert load_settings().settle_heap is False


def test_worker_processes_settle_when_started(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's main process (before forking, when ready) and each pool process settle."""
    from celery import signals

    from taskfleet.workers import signals as worker_signals
    from taskfleet.workers.hooks import SIGNAL_HOOKS

    installed = set(SIGNAL_HOOKS)
    assert (signals.worker_init, worker_signals.open_solo_pools) in installed
    assert (signals.worker_ready, worker_signals.settle_when_ready) in installed
    assert (signals.worker_process_init, worker_signals.open_child_pools) in installed

    calls: list[bool] = []
    monkeypatch.setattr(worker_signals, "settle_heap", calls.append)
    monkeypatch.setenv("TASKFLEET_SETTLE_HEAP", "false")
    from taskfleet.config import get_settings

    get_settings.cache_clear()
    try:
        worker_signals.settle_when_ready()
    finally:
        get_settings.cache_clear()
    assert calls == [False]
