"""``BatchSizer``: which job kinds a solo worker's next fetch may batch."""

from __future__ import annotations

from taskfleet.routing import fetch_batch
from taskfleet.routing.fetch_batch import BATCH_BUDGET_S, MAX_KINDS, SHORT_JOB_S, BatchSizer

SHORT = SHORT_JOB_S / 10
LONG = 1.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_job_per_fetch_until_a_kind_was_timed_as_short() -> None:
    sizer = BatchSizer(8)
    assert sizer.size() == 1
    assert sizer.short_kinds() == ()
    sizer.observe("cpu.slow", LONG)
    assert sizer.size() == 1
    sizer.observe("cpu.noop", SHORT)
    assert sizer.size() == 8
    assert sizer.short_kinds() == ("cpu.noop",)


def test_a_kind_that_turns_long_leaves_the_batch_and_comes_back_when_short_again() -> None:
    sizer = BatchSizer(8)
    for _ in range(10):
        sizer.observe("k", SHORT)
    assert sizer.short_kinds() == ("k",)
    sizer.observe("k", LONG)  # one long run: the average jumps past the line
    assert sizer.short_kinds() == ()
    for _ in range(40):
        sizer.observe("k", SHORT)
    assert sizer.short_kinds() == ("k",)


def test_short_kinds_are_sorted_and_unknown_kinds_are_not_timed() -> None:
    sizer = BatchSizer(8)
    for kind in ("b", "a", "c"):
        sizer.observe(kind, SHORT)
    sizer.observe(None, SHORT)
    sizer.observe("", SHORT)
    assert sizer.short_kinds() == ("a", "b", "c")


def test_a_limit_of_one_batches_nothing() -> None:
    sizer = BatchSizer(1)
    sizer.observe("k", SHORT)
    assert sizer.size() == 1
    assert sizer.short_kinds() == ()


def test_kinds_are_bounded() -> None:
    sizer = BatchSizer(8)
    for n in range(MAX_KINDS + 5):
        sizer.observe(f"kind-{n}", SHORT)
    assert len(sizer.averages) <= MAX_KINDS
    assert set(sizer.short_kinds()) == set(sizer.averages)


def test_the_budget_is_wall_time_since_the_batch_began() -> None:
    clock = Clock()
    sizer = BatchSizer(8, clock=clock)
    started = clock()
    assert sizer.within_budget(started)
    clock.now += BATCH_BUDGET_S / 2
    assert sizer.within_budget(started)
    clock.now += BATCH_BUDGET_S
    assert not sizer.within_budget(started)


def test_configure_sets_the_process_sizer_and_one_turns_it_off() -> None:
    try:
        fetch_batch.configure(8)
        sizer = fetch_batch.sizer()
        assert sizer is not None
        assert sizer.limit == 8
        fetch_batch.configure(1)
        assert fetch_batch.sizer() is None
    finally:
        fetch_batch.configure(None)
    assert fetch_batch.sizer() is None
