"""One priority meaning: 0..9, 9 most urgent, named levels, clear errors."""

from __future__ import annotations

import pytest

from taskfleet.routing import DEFAULT_PRIORITY, PRIORITY_LEVELS, PriorityError, parse_priority
from taskfleet.routing.transport import Channel


@pytest.mark.parametrize("value", list(range(10)))
def test_numbers_pass_through(value: int) -> None:
    assert parse_priority(value) == value


def test_levels_are_ordered_and_default_is_normal() -> None:
    levels = [parse_priority(name) for name in ("low", "normal", "high", "critical")]
    assert levels == sorted(levels)
    assert levels[-1] == 9
    assert parse_priority(None) == DEFAULT_PRIORITY == PRIORITY_LEVELS["normal"]
    assert parse_priority(" HIGH ") == PRIORITY_LEVELS["high"]
    assert parse_priority("7") == 7


@pytest.mark.parametrize("bad", [-1, 10, 99, "urgent", 2.5, True, ""])
def test_out_of_range_or_unknown_is_refused(bad: object) -> None:
    with pytest.raises(PriorityError, match=r"0\.\.9|between 0 and 9|int 0\.\.9"):
        parse_priority(bad)  # type: ignore[arg-type]


def test_redis_channel_reads_most_urgent_sublist_first() -> None:
    channel = Channel.__new__(Channel)  # the ordering logic only; no connection needed
    channel._ascending_steps = list(range(10))
    channel.priority_steps = sorted(channel._ascending_steps, reverse=True)
    assert channel.priority_steps[0] == 9
    assert [channel.priority(n) for n in (0, 5, 9, 12)] == [0, 5, 9, 9]
