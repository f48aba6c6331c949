"""taskfleet's Redis transport on a real Redis: when each unacked record and removal lands.

With ``atomic_fetch`` (the default) the fetch script records a delivery before it pops it;
without it (``TASKFLEET_ATOMIC_FETCH=false``), a consumer driven by an event loop records
each delivery in the same write as its next BRPOP. Either way removals ride with the next
fetch. These tests drive the fetch path (``drain_events``: one poll per call, as one loop
iteration) and read the hash to see exactly when each write lands; the tests of records
riding with a BRPOP run without the script, the others in both modes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.support.transport import private_transport
from tests.support.waiting import wait_for

#: Writes sent without replies land when Redis reads them: observe them with a deadline.
LANDS_WITHIN_S = 5.0
#: One "loop iteration" that finds nothing to deliver.
IDLE_POLL_S = 0.05


@contextlib.contextmanager
def _consumer(url: str, client: redis.Redis, atomic: bool) -> Iterator[dict[str, Any]]:
    """A consumer on our transport, batching as under an event loop, with its own keys."""
    with private_transport(url, client, "fetch", atomic_fetch=atomic) as wired:
        conn = wired["conn"]
        conn.transport.batch_acks = True  # what register_with_event_loop sets
        received: list[Any] = []
        consumer = conn.Consumer(
            wired["queue"], channel=wired["channel"], callbacks=[lambda _b, m: received.append(m)]
        )
        consumer.consume()

        def poll() -> None:
            """One loop iteration: send what waits, then deliver at most one message."""
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=IDLE_POLL_S)

        yield {**wired, "received": received, "poll": poll}


@pytest.fixture(params=[True, False], ids=["script", "brpop"])
def fetch(
    request: pytest.FixtureRequest, services: dict[str, str], redis_client: redis.Redis
) -> Iterator[dict[str, Any]]:
    """A consumer, with the fetch script and without it."""
    with _consumer(services["TASKFLEET_REDIS_URL"], redis_client, request.param) as wired:
        yield wired


@pytest.fixture
def brpop_fetch(services: dict[str, str], redis_client: redis.Redis) -> Iterator[dict[str, Any]]:
    """A consumer without the fetch script: records ride with the next BRPOP."""
    with _consumer(services["TASKFLEET_REDIS_URL"], redis_client, False) as wired:
        yield wired


def _deliver(f: dict[str, Any], count: int) -> list[Any]:
    wait_for(lambda: (f["poll"](), len(f["received"]) >= count)[1], LANDS_WITHIN_S, "deliveries")
    return list(f["received"])


def _settles(read: Any, expected: int, what: str) -> None:
    wait_for(lambda: read() == expected, LANDS_WITHIN_S, what)


def test_the_record_rides_with_the_next_fetch_on_one_connection(
    brpop_fetch: dict[str, Any],
) -> None:
    brpop_fetch["publish"](1)
    _deliver(brpop_fetch, 1)
    qos = brpop_fetch["channel"].qos
    assert brpop_fetch["unacked"]() == 0  # queued, not written: the next BRPOP carries it
    brpop_fetch["poll"]()
    _settles(brpop_fetch["unacked"], 1, "the record to land with the next BRPOP")
    assert brpop_fetch["indexed"]() == 1
    assert qos._writer is None  # no second connection, no separate round trip


def test_a_removal_rides_after_its_record_and_the_hash_ends_exact(fetch: dict[str, Any]) -> None:
    fetch["publish"](3)
    first = _deliver(fetch, 1)[0]
    first.ack()  # before its record was sent: the record is dropped, the removal queued
    second, third = _deliver(fetch, 3)[1:]
    second.ack()
    fetch["poll"]()
    # Record 1 was never sent (acked before it left); 2 went with its removal; 3 stays.
    _settles(fetch["unacked"], 1, "only the unacked third delivery recorded")
    assert fetch["indexed"]() == 1
    third.ack()
    fetch["channel"].flush_bookkeeping()  # what the event loop's timer calls
    fetch["poll"]()
    _settles(fetch["unacked"], 0, "the last removal")


def test_an_answered_fetch_forgets_the_writes_it_confirmed(fetch: dict[str, Any]) -> None:
    """Once a fetch on the connection has answered, nothing sent before it is kept to send
    again: kept, every removal (and record) ever sent piled up in the prefork parent."""
    fetch["publish"](20)
    for message in _deliver(fetch, 20):
        message.ack()
    fetch["channel"].flush_bookkeeping()
    _deliver(fetch, 20)  # polls: the removals ride with, or behind, the next fetch
    _settles(fetch["unacked"], 0, "every removal")
    qos = fetch["channel"].qos
    wait_for(
        lambda: (fetch["poll"](), not qos._unconfirmed_removals)[1],
        LANDS_WITHIN_S,
        "a fetch answered after the removals, confirming them",
    )
    assert qos._unconfirmed_records == {}
    assert not fetch["channel"].delivering


def test_a_server_without_reply_skipping_gets_records_on_a_second_connection(
    brpop_fetch: dict[str, Any],
) -> None:
    brpop_fetch["poll"]()  # connects the fetch connection
    brpop_fetch["channel"].client.connection._taskfleet_skips_replies = False
    brpop_fetch["publish"](1)
    first = _deliver(brpop_fetch, 1)[0]
    brpop_fetch["poll"]()
    _settles(brpop_fetch["unacked"], 1, "the record, sent on the writer connection")
    assert brpop_fetch["channel"].qos._writer is not None
    first.ack()
    brpop_fetch["channel"].flush_bookkeeping()
    _settles(brpop_fetch["unacked"], 0, "the removal, on the writer connection too")


def test_a_dropped_fetch_connection_sends_its_unconfirmed_record_again(
    brpop_fetch: dict[str, Any], redis_client: redis.Redis
) -> None:
    brpop_fetch["publish"](1)
    _deliver(brpop_fetch, 1)
    brpop_fetch["poll"]()  # the record went out with a BRPOP that is still waiting
    _settles(brpop_fetch["unacked"], 1, "the record")
    redis_client.delete(*redis_client.keys("test-unacked-*"), *redis_client.keys("test-uidx-*"))
    brpop_fetch["channel"].client.connection.disconnect()  # as kombu does on a broken link
    brpop_fetch["poll"]()  # reconnects; the unconfirmed record rides again (idempotent)
    _settles(brpop_fetch["unacked"], 1, "the record written again after the drop")


def test_close_lands_everything_and_restores_only_the_unfinished(fetch: dict[str, Any]) -> None:
    fetch["publish"](3)
    messages = _deliver(fetch, 3)
    for message in messages[:2]:
        message.ack()
    fetch["channel"].close()
    # Finished jobs are never restored (no re-run on a clean shutdown); the unfinished one is.
    assert fetch["unacked"]() == 0
    assert fetch["depth"]() == 1


def test_a_rejected_delivery_is_requeued_even_before_its_record_was_sent(
    fetch: dict[str, Any],
) -> None:
    fetch["publish"](1)
    message = _deliver(fetch, 1)[0]
    message.reject(requeue=True)  # the dead-letter step rejects inside the delivery
    assert fetch["depth"]() == 1
    assert fetch["unacked"]() == 0


def test_a_job_acked_while_the_fetch_connection_is_down_leaves_no_record(
    fetch: dict[str, Any],
) -> None:
    fetch["publish"](1)
    message = _deliver(fetch, 1)[0]
    fetch["poll"]()
    _settles(fetch["unacked"], 1, "the record")
    fetch["channel"].client.connection.disconnect()  # its record is queued to go again
    message.ack()  # ... but the job is done: the record must not follow the removal
    assert fetch["channel"].qos._unsent_records == {}
    fetch["channel"].flush_bookkeeping()  # the timer: the removal goes on the writer
    _settles(fetch["unacked"], 0, "the removal")
    fetch["poll"]()  # reconnects and fetches again: nothing stale rides with it
    fetch["poll"]()
    assert fetch["unacked"]() == 0
