"""A delivery handed to another worker stays that worker's: a late ack or start changes nothing.

A worker cut off from Redis looks dead once its heartbeat expires, and the reclaimer hands
its deliveries to others. When the link comes back, the cut-off worker must neither remove
the new holder's record with its late ack nor start the reserved jobs it no longer holds.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import redis
from kombu import Connection

from taskfleet.routing import owners, ownership
from taskfleet.routing.reclaim import Reclaimer
from taskfleet.routing.transport import TRANSPORT_PATH
from tests.support.transport import private_transport
from tests.support.waiting import wait_for

DEADLINE_S = 10.0
IDLE_POLL_S = 0.05
THRESHOLD_S = 2.0


def _consume(wired: dict[str, Any], conn: Connection, channel: Any) -> list[Any]:
    received: list[Any] = []
    conn.Consumer(
        wired["queue"], channel=channel, callbacks=[lambda _b, m: received.append(m)]
    ).consume()
    return received


def _poll(conn: Connection) -> bool:
    with contextlib.suppress(TimeoutError):
        conn.drain_events(timeout=IDLE_POLL_S)
    return True


@contextlib.contextmanager
def _claimed(client: redis.Redis, tidy: list[str]) -> Iterator[owners.Owner]:
    """Channels (their QoS) made inside belong to a fresh owner; ``tidy`` gets its key."""
    owner = owners.claim(owners.new_owner_id())
    tidy.append(owner.tags_key)
    try:
        yield owner
    finally:
        owners.release()


def test_a_late_ack_leaves_the_new_holders_record(
    services: dict[str, str], redis_client: redis.Redis
) -> None:
    url = services["TASKFLEET_REDIS_URL"]
    tidy: list[str] = []
    with private_transport(url, redis_client, "handover") as wired:
        with _claimed(redis_client, tidy) as cut_off:
            first = _consume(wired, wired["conn"], wired["channel"])
            wired["publish"](1)
            wait_for(lambda: _poll(wired["conn"]) and first, DEADLINE_S, "the first delivery")
        # The cut-off worker looks dead (no alive key): its delivery goes back to the queue.
        options = {
            "unacked_key": wired["channel"].unacked_key,
            "unacked_index_key": wired["channel"].unacked_index_key,
        }
        other = Connection(url, transport=TRANSPORT_PATH, transport_options=options)
        try:
            assert Reclaimer(other.channel()).reclaim(cut_off.id) == 1
            with _claimed(redis_client, tidy) as holder:
                channel = other.channel()
                second = _consume(wired, other, channel)
                wait_for(lambda: _poll(other) and second, DEADLINE_S, "the redelivery")
                assert second[0].delivery_tag == first[0].delivery_tag  # same tag, new holder
                assert wired["channel"].qos.owner_tags_key == cut_off.tags_key
                first[0].ack()  # the cut-off worker's late ack
                wired["channel"].flush_bookkeeping()
                wired["channel"].qos.restore_unacked()  # lands every write it has
                assert wired["unacked"]() == 1
                assert redis_client.hexists(holder.tags_key, second[0].delivery_tag)
                second[0].ack()
                channel.flush_bookkeeping()
                wait_for(lambda: _poll(other) and wired["unacked"]() == 0, DEADLINE_S, "removal")
        finally:
            other.release()
            redis_client.delete(*tidy)


def test_a_job_that_waited_starts_only_if_its_owner_still_holds_it(
    redis_client: redis.Redis,
) -> None:
    tidy: list[str] = []
    with _claimed(redis_client, tidy) as owner:
        message = types.SimpleNamespace(headers={"id": "job"}, delivery_tag="tag-1")
        original = message.headers
        ownership.stamp(message, now=1000.0)
        assert original == {"id": "job"}  # the payload a restore pushes back is untouched
        request = types.SimpleNamespace(**message.headers)
        redis_client.hset(owner.tags_key, "tag-1", "1000.0")
        assert not ownership.handed_over(request, redis_client, THRESHOLD_S, now=1003.0)
        redis_client.hdel(owner.tags_key, "tag-1")  # a reclaimer handed it over
        assert ownership.handed_over(request, redis_client, THRESHOLD_S, now=1003.0)
        # A short wait is never checked: no heartbeat could have expired meanwhile.
        assert not ownership.handed_over(request, redis_client, THRESHOLD_S, now=1001.0)
    redis_client.delete(*tidy)
    unstamped = types.SimpleNamespace(id="job")
    assert not ownership.handed_over(unstamped, redis_client, THRESHOLD_S)
