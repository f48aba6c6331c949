"""The fetch script on a real Redis: no delivery is ever held only in flight.

kombu's BRPOP pops a message and the worker records it later; a worker that dies in between
takes the only copy with it. The fetch script records first and pops second, in one step,
so a worker gone right after its fetch leaves a record that the reclaimer restores. These
tests cut a consumer off after its fetch was sent and before it read the reply, in both
modes, and check where the message is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection

from taskfleet.routing import owners
from taskfleet.routing.reclaim import Reclaimer
from taskfleet.routing.transport import TRANSPORT_PATH
from tests.support.services import on_db
from tests.support.transport import consume, private_transport
from tests.support.waiting import wait_for

DEADLINE_S = 10.0
IDLE_POLL_S = 0.05
#: Idle polls that must send no fetch while the channel waits for a notification.
IDLE_POLLS = 10
#: A database no test keeps anything in: flushed to make Redis notify every tracking client.
SCRATCH_DB = 13


@contextlib.contextmanager
def _consumer(url: str, client: redis.Redis, atomic: bool) -> Iterator[dict[str, Any]]:
    """A consumer owned by a fresh owner, on a private queue and unacked hash."""
    owner = owners.claim(owners.new_owner_id())
    try:
        with private_transport(url, client, "atomic", atomic_fetch=atomic) as wired:
            received, poll = consume(wired)
            yield {**wired, "owner": owner, "received": received, "poll": poll}
    finally:
        owners.release()
        client.delete(owner.tags_key)


def _idle_recording_fetches(wired: dict[str, Any]) -> tuple[Any, list[Any]]:
    """Poll ``wired``'s consumer until its channel waits for a notification; from then on
    only a notification ends the wait. Returns its fetch state and the fetches sent since."""
    channel, poll = wired["channel"], wired["poll"]
    wait_for(lambda: poll() and channel._fetch and channel._fetch.waiting(), DEADLINE_S, "idle")
    fetch = channel._fetch
    fetch.clock = lambda: fetch.waiting_since
    sent: list[Any] = []
    packed_call = fetch.packed_call
    fetch.packed_call = lambda *a: sent.append(a) or packed_call(*a)
    return fetch, sent


@pytest.mark.parametrize("atomic", [True, False], ids=["script", "brpop"])
def test_a_consumer_cut_off_after_its_fetch_leaves_the_delivery_restorable(
    atomic: bool, services: dict[str, str], redis_client: redis.Redis
) -> None:
    url = services["TASKFLEET_REDIS_URL"]
    with _consumer(url, redis_client, atomic) as wired:
        channel = wired["channel"]
        wired["publish"](1)
        wired["conn"].transport.cycle.on_poll_start()  # sends the fetch; nobody reads it
        wait_for(lambda: wired["depth"]() == 0, DEADLINE_S, "Redis to pop the message")
        channel.client.connection.disconnect()  # the worker is gone with the reply unread
        if not atomic:  # kombu's window: the popped message is recorded nowhere
            assert wired["unacked"]() == 0
            assert redis_client.hlen(wired["owner"].tags_key) == 0
            return
        assert wired["unacked"]() == 1
        assert wired["indexed"]() == 1
        [(tag, stamp)] = redis_client.hgetall(wired["owner"].tags_key).items()
        assert redis_client.zscore(channel.unacked_index_key, tag) == float(stamp)
        options = {
            "unacked_key": channel.unacked_key,
            "unacked_index_key": channel.unacked_index_key,
        }
        restorer = Connection(url, transport=TRANSPORT_PATH, transport_options=options)
        try:
            wired["queue"](restorer.channel()).declare()
            assert Reclaimer(restorer.channel()).reclaim(wired["owner"].id) == 1
        finally:
            restorer.release()
        assert wired["depth"]() == 1
        assert wired["unacked"]() == 0


def test_a_fetch_whose_reply_was_lost_is_restored_by_the_next_channel(
    services: dict[str, str], redis_client: redis.Redis
) -> None:
    """The worker lives on (its heartbeat is fresh, no reclaimer takes its deliveries) but
    its connection dropped with the reply in flight: its next channel puts the job back."""
    with _consumer(services["TASKFLEET_REDIS_URL"], redis_client, True) as wired:
        wired["publish"](1)
        wired["conn"].transport.cycle.on_poll_start()  # sends the fetch; nobody reads it
        wait_for(lambda: wired["depth"]() == 0, DEADLINE_S, "Redis to pop the message")
        wired["channel"].client.connection.disconnect()  # the reply is lost with the link
        assert wired["unacked"]() == 1
        _ = wired["conn"].channel().qos  # the next channel restores as its QoS starts
        assert wired["depth"]() == 1
        assert wired["unacked"]() == 0
        assert redis_client.hlen(wired["owner"].tags_key) == 0


def test_an_idle_consumer_sends_nothing_until_a_publish_wakes_it(
    services: dict[str, str], redis_client: redis.Redis
) -> None:
    with _consumer(services["TASKFLEET_REDIS_URL"], redis_client, True) as wired:
        poll = wired["poll"]
        _, sent = _idle_recording_fetches(wired)
        for _ in range(IDLE_POLLS):
            poll()
        assert sent == []
        wired["publish"](1)
        wait_for(lambda: poll() and wired["received"], DEADLINE_S, "the delivery")
        assert wired["unacked"]() == 1  # recorded by the script
        wired["received"][0].ack()


def test_a_consumer_that_took_the_last_message_waits_without_fetching_again(
    services: dict[str, str], redis_client: redis.Redis
) -> None:
    """Each job offered to an idle worker used to cost two fetches: the one that took it,
    then one that found the lists empty. The script now says it took the last one."""
    with _consumer(services["TASKFLEET_REDIS_URL"], redis_client, True) as wired:
        poll = wired["poll"]
        fetch, sent = _idle_recording_fetches(wired)
        fetch.clock = lambda: 1000.0  # a wait never times out here
        for expected in (1, 2):
            wired["publish"](1)
            wait_for(
                lambda n=expected: poll() and len(wired["received"]) == n,  # type: ignore[misc]
                DEADLINE_S,
                f"delivery {expected}",
            )
            for _ in range(IDLE_POLLS):
                poll()
            assert len(sent) == expected  # the fetch that took it, and no empty one after
            assert fetch.waiting()
        for message in wired["received"]:
            message.ack()


def test_only_a_write_to_the_queues_lists_wakes_an_idle_consumer(
    services: dict[str, str], redis_client: redis.Redis
) -> None:
    """The tracked prefix is the queue's name, which also begins other keys (``celery`` begins
    every ``celery-task-meta-*`` result): writing those must not wake the consumer, a publish
    to any of its priority sub-lists must."""
    with _consumer(services["TASKFLEET_REDIS_URL"], redis_client, True) as wired:
        channel = wired["channel"]
        poll = wired["poll"]
        name = wired["queue"].name
        fetch, sent = _idle_recording_fetches(wired)
        others = [f"{name}-task-meta-1", f"{name}.dlq", f"{name}{channel.sep}x"]
        try:
            for key in others:
                redis_client.set(key, "1")
            marker = f"{name}-marker"  # written last: once it is drained, so are the others
            redis_client.set(marker, "1")
            wait_for(
                lambda: poll() and not fetch.waiter.connection.can_read(timeout=0),
                DEADLINE_S,
                "the notifications to be read",
            )
            for _ in range(IDLE_POLLS):
                poll()
            assert sent == []
            assert fetch.waiting()
        finally:
            redis_client.delete(*others, marker)
        producer = wired["conn"].Producer(channel)
        queue = wired["queue"]
        producer.publish({"n": 0}, exchange=queue.exchange, routing_key=name, priority=9)
        wait_for(lambda: poll() and wired["received"], DEADLINE_S, "the urgent delivery")
        assert len(sent) >= 1
        wired["received"][0].ack()


def test_a_flush_wakes_an_idle_consumer_and_it_keeps_consuming(
    services: dict[str, str], redis_client: redis.Redis
) -> None:
    """A flush of any database sends every tracking client an invalidation naming no key
    (Redis 6.2 writes it in the tracking connection's protocol): the waiter reads it as a
    wake-up, and the consumer goes on."""
    with _consumer(services["TASKFLEET_REDIS_URL"], redis_client, True) as wired:
        poll = wired["poll"]
        _, sent = _idle_recording_fetches(wired)
        scratch = redis.Redis.from_url(on_db(services["TASKFLEET_REDIS_URL"], SCRATCH_DB))
        try:
            scratch.flushdb()
        finally:
            scratch.close()
        wait_for(lambda: poll() and sent, DEADLINE_S, "the flush to wake the consumer")
        wired["publish"](1)
        wait_for(lambda: poll() and wired["received"], DEADLINE_S, "a delivery after the flush")
        wired["received"][0].ack()


def test_a_script_redis_forgot_is_loaded_again(
    services: dict[str, str], redis_client: redis.Redis
) -> None:
    with _consumer(services["TASKFLEET_REDIS_URL"], redis_client, True) as wired:
        wired["publish"](1)
        wait_for(lambda: wired["poll"]() and wired["received"], DEADLINE_S, "the first delivery")
        redis_client.script_flush()  # as after a Redis restart without the script cache
        wired["publish"](1)
        wait_for(lambda: wired["poll"]() and len(wired["received"]) == 2, DEADLINE_S, "the second")
        assert wired["unacked"]() == 2


def test_a_queue_consumed_without_acks_keeps_brpop_and_leaves_no_record(
    services: dict[str, str], redis_client: redis.Redis
) -> None:
    """Control replies are consumed without acks: nothing would ever remove a record."""
    url = services["TASKFLEET_REDIS_URL"]
    with private_transport(url, redis_client, "noack") as wired:
        received, poll = consume(wired, no_ack=True)
        wired["publish"](2)
        wait_for(lambda: poll() and len(received) == 2, DEADLINE_S, "both messages")
        assert wired["unacked"]() == 0
        assert wired["channel"]._fetch is None
