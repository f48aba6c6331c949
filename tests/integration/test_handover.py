"""A delivery handed to another worker stays that worker's: a late ack or start changes nothing.

A worker cut off from Redis looks dead once its heartbeat expires, and the reclaimer hands
its deliveries to others. When the link comes back, the cut-off worker must neither remove
the new holder's record with its late ack nor start the reserved jobs it no longer holds.
"""

from __future__ import annotations

import contextlib
import json
import time
import types
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kombu import Connection

from taskfleet.client import Client
from taskfleet.config import load_settings
from taskfleet.resilience.diag_keys import record_log_key, record_release_key
from taskfleet.routing import owners, ownership
from taskfleet.routing.depth import redis_priority_key
from taskfleet.routing.reclaim import Reclaimer
from taskfleet.routing.transport import TRANSPORT_PATH
from taskfleet.workers.profiles import cpu_profile
from tests.integration.test_reclaim import HEARTBEAT_INTERVAL_S, OWNER_TAGS, SETTLE_S
from tests.integration.test_reclaim import _env as reclaim_env
from tests.integration.test_reclaim import _held as held
from tests.integration.test_reclaim import _hold as hold
from tests.integration.test_reclaim import _owner as worker_owner
from tests.integration.test_reclaim import _starts as starts
from tests.integration.test_reclaim import _unacked_of as unacked_of
from tests.support.transport import consume, private_transport
from tests.support.waiting import wait_for
from tests.support.workers import Fleet

DEADLINE_S = 10.0
IDLE_POLL_S = 0.05
THRESHOLD_S = 2.0
#: Past the ownership check's threshold (the fleet's heartbeat interval), with a margin.
WAITED_S = 3 * HEARTBEAT_INTERVAL_S


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
            first, poll_first = consume(wired)
            wired["publish"](1)
            wait_for(lambda: poll_first() and first, DEADLINE_S, "the first delivery")
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
                second, poll_other = consume(wired, other, channel)
                wait_for(lambda: poll_other() and second, DEADLINE_S, "the redelivery")
                assert second[0].delivery_tag == first[0].delivery_tag  # same tag, new holder
                assert wired["channel"].qos.owner_tags_key == cut_off.tags_key
                first[0].ack()  # the cut-off worker's late ack
                wired["channel"].flush_bookkeeping()
                wired["channel"].qos.restore_unacked()  # lands every write it has
                assert wired["unacked"]() == 1
                assert redis_client.hexists(holder.tags_key, second[0].delivery_tag)
                second[0].ack()
                channel.flush_bookkeeping()
                wait_for(lambda: poll_other() and wired["unacked"]() == 0, DEADLINE_S, "removal")
        finally:
            other.release()
            redis_client.delete(*tidy)


def test_a_job_that_waited_starts_only_if_its_owner_still_holds_it(
    redis_client: redis.Redis,
) -> None:
    tidy: list[str] = []
    with _claimed(redis_client, tidy) as owner:
        message = types.SimpleNamespace(headers={"id": "job"}, delivery_tag="tag-1")
        ownership.stamp(message)
        assert message.headers == {"id": "job"}  # no record stamp: nothing to check against
        message.record_stamp = 1000.0  # what bookkeeping sets when it records the delivery
        original = message.headers
        ownership.stamp(message)
        assert original == {"id": "job"}  # the payload a restore pushes back is untouched
        request = types.SimpleNamespace(**message.headers)
        redis_client.hset(owner.tags_key, "tag-1", "1000.0")
        assert not ownership.handed_over(request, redis_client, THRESHOLD_S, now=1003.0)
        redis_client.hset(owner.tags_key, "tag-1", "1002.5")  # handed over, fetched again
        assert ownership.handed_over(request, redis_client, THRESHOLD_S, now=1003.0)
        redis_client.hdel(owner.tags_key, "tag-1")  # handed over to another worker
        assert ownership.handed_over(request, redis_client, THRESHOLD_S, now=1003.0)
        # A short wait is never checked: no heartbeat could have expired meanwhile.
        assert not ownership.handed_over(request, redis_client, THRESHOLD_S, now=1001.0)
    redis_client.delete(*tidy)
    unstamped = types.SimpleNamespace(id="job")
    assert not ownership.handed_over(unstamped, redis_client, THRESHOLD_S)


@pytest.mark.fast_transport(reason=OWNER_TAGS)
def test_a_reserved_job_handed_over_while_it_waited_is_not_run_here(
    redis_env: dict[str, str], redis_client: redis.Redis, tmp_path: Path
) -> None:
    """A prefork worker of one process holds a running job and a reserved one; the reserved
    delivery is handed over (as a reclaimer does: owner entry and record dropped, message
    pushed back); when the process frees, the worker skips its copy and runs the queued one:
    the job runs once."""
    env = reclaim_env(redis_env, "handover")
    log = uuid.uuid4().hex
    fleet = Fleet(env, tmp_path)
    try:
        fleet.start(cpu_profile(load_settings(**fleet.settings_overrides), 1), "worker")
        client = Client(fleet.app())
        try:
            running, reserved = hold(client, log, 2)
            owner = worker_owner(redis_client, fleet.procs["worker"].pid)
            wait_for(
                lambda: (
                    starts(redis_client, log) == Counter({running.id: 1})
                    and held(redis_client, owner) == 2
                ),
                SETTLE_S,
                "one job running and one reserved",
            )
            _hand_over(redis_client, owner, reserved.id)
            # The reserved job was fetched with the running one: let it wait past the check's
            # threshold (one heartbeat interval) before its process frees.
            wait_for(
                lambda: time.time() - _started_at(redis_client, log, running.id) > WAITED_S,
                SETTLE_S,
                "the reserved job to wait a heartbeat interval",
            )
            redis_client.set(record_release_key(log), 1)
            assert reserved.result(SETTLE_S)["attempt"] == 1
            assert running.result(SETTLE_S)["attempt"] == 1
        finally:
            client.close()
        assert starts(redis_client, log) == Counter({running.id: 1, reserved.id: 1})
        skipped = "its delivery went to another worker: acknowledged here, not run"
        log_file = tmp_path / "worker.log"
        wait_for(lambda: skipped in log_file.read_text(errors="replace"), SETTLE_S, "the skip")
        queue = env["TASKFLEET_CPU_QUEUE"]
        wait_for(lambda: not unacked_of(redis_client, queue), SETTLE_S, "every delivery acked")
    finally:
        fleet.stop()


def _started_at(client: redis.Redis, log: str, job_id: str) -> float:
    entries = [json.loads(e) for e in client.lrange(record_log_key(log), 0, -1)]
    return min(float(e["at"]) for e in entries if e["id"] == job_id)


def _hand_over(client: redis.Redis, owner: str, job_id: str) -> None:
    """What a reclaimer does to one delivery: requeue its message, drop its records."""
    for tag in client.hkeys(owners.tags_key(owner)):
        record = client.hget("unacked", tag)
        if record is None or job_id.encode() not in record:
            continue
        payload, _exchange, _routing_key = json.loads(record)
        payload["headers"]["redelivered"] = True
        payload["properties"]["delivery_info"]["redelivered"] = True
        queue = payload["properties"]["delivery_info"]["routing_key"]
        key = redis_priority_key(queue, int(payload["properties"].get("priority") or 0))
        pipe = client.pipeline()
        pipe.hdel(owners.tags_key(owner), tag)
        pipe.hdel("unacked", tag)
        pipe.zrem("unacked_index", tag)
        pipe.rpush(key, json.dumps(payload))
        pipe.execute()
        return
    raise AssertionError(f"no delivery of {job_id} held by {owner}")
