"""taskfleet's Redis transport on a real Redis: batched ack bookkeeping and the reused client.

kombu records each delivery in an ``unacked`` hash + index and removes it on ack. When an
event loop drives the transport, taskfleet defers the removal to the next delivery's
pipeline, a timer, or channel close; these tests read the hash to see exactly when.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from taskfleet.routing.transport import ACK_BATCH_MAX
from tests.support.transport import private_transport
from tests.support.waiting import wait_for

#: Batched writes are sent without waiting for their replies: observe them with a deadline.
LANDS_WITHIN_S = 5.0


def _settles(read: Any, expected: int, what: str) -> None:
    wait_for(lambda: read() == expected, LANDS_WITHIN_S, what)


@pytest.fixture
def wiring(services: dict[str, str], redis_client: redis.Redis) -> Iterator[dict[str, Any]]:
    """A connection on our transport with its own queue and unacked keys."""
    with private_transport(services["TASKFLEET_REDIS_URL"], redis_client, "acks") as wired:
        yield wired


def _get(w: dict[str, Any]) -> Any:
    message = w["channel"].basic_get(w["queue"].name, no_ack=False)
    assert message is not None
    return message


def test_without_an_event_loop_acks_are_synchronous(wiring: dict[str, Any]) -> None:
    wiring["publish"](1)
    message = _get(wiring)
    assert wiring["unacked"]() == 1
    message.ack()
    assert wiring["unacked"]() == 0


def test_batched_ack_rides_on_the_next_delivery(wiring: dict[str, Any]) -> None:
    wiring["conn"].transport.batch_acks = True
    wiring["publish"](2)
    first = _get(wiring)
    first.ack()
    # kombu's QoS is released at once, the Redis bookkeeping waits for a pipeline. The
    # record went out on the writer without waiting for its reply: read it with a deadline.
    assert wiring["channel"].qos._pending_acks == [first.delivery_tag]
    _settles(wiring["unacked"], 1, "the first delivery recorded, its removal held back")
    second = _get(wiring)
    # One write removes the first and records the second: the hash goes 1 -> 1, never 2.
    _settles(wiring["unacked"], 1, "the second delivery recorded, the first removed")
    assert wiring["channel"].qos._pending_acks == []
    second.ack()
    wiring["conn"].transport._flush_acks()  # what the event loop's timer calls
    _settles(wiring["unacked"], 0, "the timer flush to land")


def test_a_full_batch_flushes_on_its_own(wiring: dict[str, Any]) -> None:
    wiring["conn"].transport.batch_acks = True
    wiring["publish"](ACK_BATCH_MAX)
    messages = [_get(wiring) for _ in range(ACK_BATCH_MAX)]
    _settles(wiring["unacked"], ACK_BATCH_MAX, "every delivery recorded")
    for message in messages[:-1]:
        message.ack()
    assert wiring["channel"].qos._pending_acks  # still waiting for a ride
    messages[-1].ack()
    assert wiring["channel"].qos._pending_acks == []
    _settles(wiring["unacked"], 0, "the full batch to be removed")


def test_close_flushes_acks_and_restores_only_unacked(wiring: dict[str, Any]) -> None:
    wiring["conn"].transport.batch_acks = True
    wiring["publish"](3)
    finished = [_get(wiring), _get(wiring)]
    _get(wiring)  # still running when the worker shuts down
    for message in finished:
        message.ack()
    _settles(wiring["unacked"], 3, "three deliveries recorded, two acks pending")
    wiring["channel"].close()
    # Finished jobs are never restored (no re-run on a clean shutdown); the unfinished one is.
    assert wiring["unacked"]() == 0
    assert wiring["depth"]() == 1


def test_an_unflushed_ack_is_redelivered_not_lost(
    wiring: dict[str, Any], redis_client: redis.Redis
) -> None:
    """A crash before the flush leaves the entry for kombu's visibility-timeout restore."""
    wiring["conn"].transport.batch_acks = True
    wiring["publish"](1)
    _get(wiring).ack()
    _settles(wiring["unacked"], 1, "the delivery recorded")  # what a SIGKILL would leave
    qos = wiring["channel"].qos
    qos._pending_acks.clear()  # the crash: pending removals are gone with the process
    qos.visibility_timeout = 0
    qos._vrestore_count = 0
    qos.restore_visible(start=0, num=10, interval=1)
    assert wiring["depth"]() == 1


def test_the_channel_reuses_one_client_per_pool(wiring: dict[str, Any]) -> None:
    channel = wiring["channel"]
    first = channel._create_client()
    assert channel._create_client() is first
    channel._pool = None  # kombu drops its pool on a connection error
    replaced = channel._create_client()
    assert replaced is not first
    assert replaced.connection_pool is channel.pool
