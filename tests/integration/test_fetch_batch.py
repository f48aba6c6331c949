"""Several jobs per fetch, on a real Redis: every one recorded, in order, none lost.

The fetch script is called directly to check what it takes and records; a consumer on
taskfleet's transport then checks what the channel does with a batch: delivers it in queue
order, keeps strict priority, and, once a batch outlasts its time budget, puts the jobs it
did not start back at the head of the queue.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from taskfleet.results.backend import STORE_RESULT_LUA
from taskfleet.results.pipelining import PipelinedScript
from taskfleet.results.stream import PERSIST_STREAM
from taskfleet.routing import fetch_batch, owners
from taskfleet.routing.atomic_fetch import FETCH_LUA
from taskfleet.routing.fetch_batch import BatchSizer
from tests.support.transport import private_transport
from tests.support.waiting import wait_for

DEADLINE_S = 10.0
SHORT_JOB_S = 0.0001
KIND = "t.short"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _message(n: int, kind: str = "t.short") -> bytes:
    tag = f"tag-{n}"
    return json.dumps(
        {
            "body": str(n),
            "headers": {"task": kind},
            "properties": {
                "delivery_tag": tag,
                "delivery_info": {"exchange": "x", "routing_key": "q"},
            },
        }
    ).encode()


@pytest.fixture
def keys(redis_client: redis.Redis) -> Iterator[dict[str, str]]:
    names = {k: f"test-batch-{k}-{owners.new_owner_id()}" for k in ("unacked", "index", "tags")}
    names.update(high="test-batch-q\x06\x169", low="test-batch-q")
    yield names
    redis_client.delete(*names.values())


def _fetch(client: redis.Redis, keys: dict[str, str], most: int, *kinds: str) -> Any:
    """The script's reply without its last element (whether the lists are empty now)."""
    reply = _fetch_reply(client, keys, most, *kinds)
    return reply[:-1] if reply else reply


def _fetch_reply(client: redis.Redis, keys: dict[str, str], most: int, *kinds: str) -> Any:
    return client.eval(
        FETCH_LUA,
        5,
        keys["unacked"],
        keys["index"],
        keys["tags"],
        keys["high"],
        keys["low"],
        "12.5",
        "1",
        str(most),
        *(kinds or ("t.short",)),
    )


def test_the_script_takes_up_to_the_batch_from_the_first_non_empty_list_and_records_each(
    redis_client: redis.Redis, keys: dict[str, str]
) -> None:
    redis_client.lpush(keys["low"], *[_message(n) for n in range(100, 103)])
    redis_client.lpush(keys["high"], *[_message(n) for n in range(5)])  # oldest at the right

    reply = _fetch(redis_client, keys, 3)
    assert reply[0].decode() == keys["high"]
    assert [json.loads(p)["body"] for p in reply[1::3]] == ["0", "1", "2"]
    assert reply[2::3] == [1, 1, 1]
    assert reply[3::3] == [b"t.short"] * 3
    assert sorted(redis_client.hkeys(keys["unacked"])) == [b"tag-0", b"tag-1", b"tag-2"]
    assert redis_client.hgetall(keys["tags"]) == {f"tag-{n}".encode(): b"12.5" for n in range(3)}
    assert redis_client.zcard(keys["index"]) == 3

    reply = _fetch(redis_client, keys, 8)  # two left in the urgent list: never a later one
    assert [json.loads(p)["body"] for p in reply[1::3]] == ["3", "4"]
    assert redis_client.llen(keys["low"]) == 3


def test_a_batch_stops_before_a_message_it_cannot_record(
    redis_client: redis.Redis, keys: dict[str, str]
) -> None:
    redis_client.lpush(keys["low"], _message(0), _message(1), b"not json", _message(3))

    reply = _fetch(redis_client, keys, 8)
    assert [json.loads(p)["body"] for p in reply[1::3]] == ["0", "1"]
    reply = _fetch(redis_client, keys, 8)  # alone, unrecorded, as a single fetch takes it
    assert reply[1:] == [b"not json", 0, b""]
    reply = _fetch(redis_client, keys, 8)
    assert [json.loads(p)["body"] for p in reply[1::3]] == ["3"]
    assert redis_client.hlen(keys["unacked"]) == 3


def test_the_reply_ends_by_saying_whether_every_list_is_empty_now(
    redis_client: redis.Redis, keys: dict[str, str]
) -> None:
    """An idle channel that took the last message waits for a notification at once, instead
    of fetching again to find the lists empty (``atomic_fetch``)."""
    redis_client.lpush(keys["low"], _message(0), _message(1))
    redis_client.lpush(keys["high"], _message(2))
    assert _fetch_reply(redis_client, keys, 8)[-1] == 0  # the urgent list is empty, not the other
    reply = _fetch_reply(redis_client, keys, 8)
    assert [json.loads(p)["body"] for p in reply[1:-1:3]] == ["0", "1"]
    assert reply[-1] == 1
    assert _fetch_reply(redis_client, keys, 8) is None  # nothing to take: no flag either


def test_one_at_a_time_when_asked_for_one(redis_client: redis.Redis, keys: dict[str, str]) -> None:
    redis_client.lpush(keys["low"], _message(0), _message(1))
    assert len(_fetch(redis_client, keys, 1)) == 4
    assert redis_client.llen(keys["low"]) == 1


def test_only_short_kinds_are_batched_and_a_long_one_is_taken_alone(
    redis_client: redis.Redis, keys: dict[str, str]
) -> None:
    sequence = [("t.short", 0), ("t.short", 1), ("t.long", 2), ("t.short", 3), ("t.long", 4)]
    redis_client.lpush(keys["low"], *[_message(n, kind) for kind, n in sequence])

    bodies = []
    while reply := _fetch(redis_client, keys, 8):
        bodies.append([json.loads(p)["body"] for p in reply[1::3]])
    assert bodies == [["0", "1"], ["2"], ["3"], ["4"]]


@contextlib.contextmanager
def _batching_consumer(
    url: str, client: redis.Redis, sizer: BatchSizer, on_message: Any
) -> Iterator[dict[str, Any]]:
    """A consumer with a batch sizer, owned by a fresh owner; acks what it receives."""
    owner = owners.claim(owners.new_owner_id())
    fetch_batch._sizer = sizer
    try:
        with private_transport(url, client, "batch") as wired:
            received: list[int] = []
            #: Those delivered marked ``redelivered`` (a batch's rest never ran: none).
            redelivered: list[int] = []

            def callback(body: Any, message: Any) -> None:
                received.append(body["n"])
                if message.delivery_info.get("redelivered") or message.headers.get("redelivered"):
                    redelivered.append(body["n"])
                on_message(received)
                message.ack()

            wired["conn"].Consumer(
                wired["queue"], channel=wired["channel"], callbacks=[callback]
            ).consume()

            def poll() -> bool:
                with contextlib.suppress(TimeoutError):
                    wired["conn"].drain_events(timeout=0.05)
                return True

            yield {
                **wired,
                "owner": owner,
                "received": received,
                "redelivered": redelivered,
                "poll": poll,
            }
    finally:
        fetch_batch.configure(None)
        owners.release()
        client.delete(owner.tags_key)


def _publish(wired: dict[str, Any], numbers: range, priority: int = 0) -> None:
    producer = wired["conn"].Producer(wired["channel"])
    queue = wired["queue"]
    for n in numbers:
        producer.publish(
            {"n": n},
            exchange=queue.exchange,
            routing_key=queue.routing_key,
            priority=priority,
            headers={"task": KIND},
        )


def _evalsha_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0))


def _short_sizer(clock: Any = None) -> BatchSizer:
    """A sizer that has timed ``KIND`` as short: the next fetch may take 8."""
    sizer = BatchSizer(8) if clock is None else BatchSizer(8, clock=clock)
    sizer.observe(KIND, SHORT_JOB_S)
    return sizer


def _await_received(wired: dict[str, Any], count: int) -> None:
    wait_for(
        lambda: wired["poll"]() and len(wired["received"]) >= count,
        DEADLINE_S,
        f"{count} deliveries",
    )


def test_a_batch_is_delivered_in_queue_order_with_fewer_fetches(
    services: dict[str, str], redis_client: redis.Redis
) -> None:
    url = services["TASKFLEET_REDIS_URL"]
    with _batching_consumer(url, redis_client, _short_sizer(), lambda _: None) as wired:
        _publish(wired, range(40))
        before = _evalsha_calls(redis_client)
        _await_received(wired, 40)
        fetches = _evalsha_calls(redis_client) - before
        assert wired["received"] == list(range(40))
        assert fetches < 20  # one at a time would take 40 (other clients may add a few)
        wait_for(lambda: wired["poll"]() and wired["unacked"]() == 0, DEADLINE_S, "acks")
        assert redis_client.hlen(wired["owner"].tags_key) == 0


def test_a_batch_never_mixes_priorities(
    services: dict[str, str], redis_client: redis.Redis
) -> None:
    url = services["TASKFLEET_REDIS_URL"]
    with _batching_consumer(url, redis_client, _short_sizer(), lambda _: None) as wired:
        _publish(wired, range(100, 105), priority=0)
        _publish(wired, range(5), priority=9)
        _await_received(wired, 10)
        assert wired["received"] == [0, 1, 2, 3, 4, 100, 101, 102, 103, 104]


def test_what_a_batch_did_not_start_within_its_budget_goes_back_to_the_head_in_order(
    services: dict[str, str], redis_client: redis.Redis
) -> None:
    clock = Clock()
    sizer = _short_sizer(clock)  # recent jobs were short: the next fetch takes 8

    def slow_from_the_second(received: list[int]) -> None:
        if len(received) == 2:  # the batch's second job outlasts the whole budget
            clock.now += 1.0

    url = services["TASKFLEET_REDIS_URL"]
    with _batching_consumer(url, redis_client, sizer, slow_from_the_second) as wired:
        _publish(wired, range(10))
        _await_received(wired, 2)
        assert wired["received"] == [0, 1]
        assert wired["depth"]() == 8  # 2..7 came back, in front of 8 and 9
        assert sizer.short_kinds() == ()  # and the next fetches take one job each
        _await_received(wired, 10)
        assert wired["received"] == list(range(10))
        assert wired["redelivered"] == []  # they never ran: no redelivery, no result lookup
        wait_for(lambda: wired["poll"]() and wired["unacked"]() == 0, DEADLINE_S, "acks")
        assert redis_client.hlen(wired["owner"].tags_key) == 0


class JobCrashed(Exception):
    """Raised out of a consumer's callback, as an error escaping a job's delivery would."""


def test_when_a_batchs_first_delivery_raises_the_rest_goes_back_in_order(
    services: dict[str, str], redis_client: redis.Redis
) -> None:
    def crash_on_the_first(received: list[int]) -> None:
        if received == [0]:
            raise JobCrashed

    url = services["TASKFLEET_REDIS_URL"]
    with _batching_consumer(url, redis_client, _short_sizer(), crash_on_the_first) as wired:
        _publish(wired, range(10))
        with pytest.raises(JobCrashed):
            wait_for(wired["poll"], DEADLINE_S, "the first delivery")
        assert wired["depth"]() == 9  # 1..9 came back; 0 is held (unacked) by the channel
        _await_received(wired, 10)
        assert wired["received"] == list(range(10))
        assert wired["redelivered"] == []


def test_a_batchs_results_leave_together_and_before_any_of_its_acknowledgements(
    services: dict[str, str], redis_client: redis.Redis
) -> None:
    """Result writes made while a batch runs are held in the process (one send for the
    batch), and an acknowledgement never leaves before the results: sending the pending
    removals mid-batch sends the held results first."""
    store = redis_client.register_script(STORE_RESULT_LUA)
    results = PipelinedScript(redis_client, STORE_RESULT_LUA, lambda k, a: store(keys=k, args=a))
    run = uuid.uuid4().hex
    key = f"celery-task-meta-batch-{run}-{{}}".format
    seen_in_redis: dict[int, list[int]] = {}

    def store_result(received: list[int]) -> None:
        n = received[-1]
        seen_in_redis[n] = [m for m in range(3) if redis_client.exists(key(m))]
        results.send([key(n), PERSIST_STREAM], [json.dumps({"status": "SUCCESS"}), 60])
        if n == 2:  # jobs 0 and 1 are acked (removals pending): send the removals now
            wired["channel"].qos.flush_acks()
            wait_for(
                lambda: redis_client.exists(key(0), key(1), key(2)) == 3,
                DEADLINE_S,
                "the held results, sent ahead of the removals",
            )

    url = services["TASKFLEET_REDIS_URL"]
    try:
        with _batching_consumer(url, redis_client, _short_sizer(), store_result) as wired:
            # As in a worker's event loop: an ack's removal waits for a later write.
            wired["channel"].connection.batch_acks = True
            _publish(wired, range(4))
            _await_received(wired, 4)
            assert wired["received"] == [0, 1, 2, 3]
            assert seen_in_redis[1] == []  # job 0's result still held while job 1 ran
            assert seen_in_redis[2] == []
            results.confirm()
            assert redis_client.exists(key(3)) == 1
    finally:
        results.close()
        redis_client.delete(*(key(m) for m in range(4)))
