"""One priority meaning: 0..9, 9 most urgent, named levels, clear errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection

from taskfleet.routing import DEFAULT_PRIORITY, PRIORITY_LEVELS, PriorityError, parse_priority
from taskfleet.routing.depth import redis_priority_key
from taskfleet.routing.priority import ALL_PRIORITY_STEPS
from taskfleet.routing.stock_transport import STOCK_TRANSPORT_PATH
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


@pytest.fixture
def stock_channel(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A channel of the stock-path transport, configured as taskfleet's app configures it
    (its start-up PING stubbed: nothing connects)."""
    monkeypatch.setattr(redis.Redis, "ping", lambda self, **_: True)
    options = {"priority_steps": ALL_PRIORITY_STEPS, "queue_order_strategy": "priority"}
    conn = Connection(
        "redis://127.0.0.1:1/0", transport=STOCK_TRANSPORT_PATH, transport_options=options
    )
    try:
        yield conn.default_channel
    finally:
        conn.release()


def test_stock_channel_reads_most_urgent_sublist_first(stock_channel: Any) -> None:
    """The fallback transport (``TASKFLEET_FAST_TRANSPORT=false``) keeps taskfleet's order
    and the producers' sub-lists: priority ``n`` in step ``n``'s list, 9 read first."""
    assert stock_channel.priority_steps == sorted(ALL_PRIORITY_STEPS, reverse=True)
    assert [stock_channel.priority(n) for n in (0, 5, 9, 12)] == [0, 5, 9, 9]
    read_order = [stock_channel._q_for_pri("q", step) for step in stock_channel.priority_steps]
    assert read_order == [redis_priority_key("q", step) for step in range(9, -1, -1)]


def test_stock_channel_maps_coarse_steps_like_kombu(monkeypatch: pytest.MonkeyPatch) -> None:
    """With kombu's default steps (0, 3, 6, 9) a priority lands where stock kombu puts it."""
    monkeypatch.setattr(redis.Redis, "ping", lambda self, **_: True)
    conn = Connection("redis://127.0.0.1:1/0", transport=STOCK_TRANSPORT_PATH)
    try:
        channel = conn.default_channel
        assert channel.priority_steps == [9, 6, 3, 0]
        assert [channel.priority(n) for n in range(10)] == [0, 0, 0, 3, 3, 3, 6, 6, 6, 9]
    finally:
        conn.release()
