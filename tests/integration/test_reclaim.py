"""A dead worker's jobs run again within seconds on Redis (heartbeat sidecars, reclaimer).

Every fleet here runs with a visibility timeout of an hour: only the reclaimer can explain a
job that runs again within these tests' deadlines. Held jobs are ``diag.record`` jobs, which
log each execution (so runs are counted per job id) and hold until the test releases them.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import states
from kombu import Connection

from taskfleet.client import Client
from taskfleet.config import load_settings
from taskfleet.handles import JobHandle
from taskfleet.resilience.diag_keys import counter_key, record_log_key, record_release_key
from taskfleet.resilience.dlq import DeadLetterQueues
from taskfleet.results.store import ResultRow, upsert_results
from taskfleet.routing import bookkeeping, owners
from taskfleet.routing.depth import redis_priority_key, redis_queue_depths
from taskfleet.routing.reclaim import STATS_PREFIX, Reclaimer
from taskfleet.routing.transport import TRANSPORT_PATH
from taskfleet.routing.wire import TaskMessage, next_delivery_tag
from taskfleet.workers.profiles import cpu_profile, io_profile
from tests.integration.test_dead_letters import resilience_env
from tests.support.transport import consume, private_transport
from tests.support.waiting import wait_for
from tests.support.workers import Fleet, kill_tree

VISIBILITY_S = 3600
HEARTBEAT_INTERVAL_S = 0.5
HEARTBEAT_TTL_S = 3.0
RECLAIM_INTERVAL_S = 0.5
#: A dead worker's jobs must be running again within this (an hour without the reclaimer).
RECOVERY_DEADLINE_S = 45.0
SETTLE_S = 30.0
HOLD_MS = 60_000
#: Jobs behind a killed prefork worker of two processes (two running, one spare reserved).
KILL_JOBS = 6
PREFORK_PROCESSES = 2
HELD_BY_PREFORK = PREFORK_PROCESSES + 1
#: Reclaim passes the fleet must make while a slow job outlives the TTL, unrobbed.
PASSES_WHILE_SLOW = 6
RACE_DELIVERIES = 20
GREENLETS = 3
#: Why the fleet tests here need the workers on taskfleet's transport (the rest build it).
OWNER_TAGS = (
    "a dead worker's deliveries come back within seconds only when the workers' transport "
    "tags them with their owner (stock kombu: after the visibility timeout)"
)


@pytest.fixture
def fleets(tmp_path: Path) -> Iterator[list[Fleet]]:
    """Fleets a test starts; all stopped at its end."""
    started: list[Fleet] = []
    yield started
    for fleet in started:
        fleet.stop()


def _env(redis_env: dict[str, str], tag: str, **extra: str) -> dict[str, str]:
    return {
        **resilience_env(redis_env, tag),
        "TASKFLEET_VISIBILITY_TIMEOUT": str(VISIBILITY_S),
        "TASKFLEET_RESILIENCE_HEARTBEAT_INTERVAL": str(HEARTBEAT_INTERVAL_S),
        "TASKFLEET_RESILIENCE_HEARTBEAT_TTL": str(HEARTBEAT_TTL_S),
        "TASKFLEET_RESILIENCE_RECLAIM_INTERVAL": str(RECLAIM_INTERVAL_S),
        "TASKFLEET_CPU_POOL": "prefork",  # unless ``extra`` says solo
        **extra,
    }


def _start(
    fleets: list[Fleet], env: dict[str, str], log_dir: Path, name: str, n: int, pool: str = "cpu"
) -> int:
    """Start one worker (CPU: prefork of ``n`` processes, or solo per ``env``; I/O: gevent
    of ``n`` greenlets); its pid."""
    fleet = Fleet(env, log_dir)
    fleets.append(fleet)
    profile = cpu_profile if pool == "cpu" else io_profile
    fleet.start(profile(load_settings(**fleet.settings_overrides), n), name)
    return fleet.procs[name].pid


def _owner(client: redis.Redis, pid: int) -> str:
    """The owner id the worker with main process ``pid`` claimed."""

    def find() -> str | None:
        members = client.zrange(owners.registry_key("unacked"), 0, -1)
        return next((m.decode() for m in members if f":{pid}:" in m.decode()), None)

    return wait_for(find, 10, f"the owner of worker {pid}")


def _starts(client: redis.Redis, log: str) -> Counter[str]:
    entries = [json.loads(e) for e in client.lrange(record_log_key(log), 0, -1)]
    return Counter(e["id"] for e in entries if e["phase"] == "start")


def _held(client: redis.Redis, owner: str) -> int:
    return int(client.hlen(owners.tags_key(owner)))


def _unacked_of(client: redis.Redis, queue: str) -> list[bytes]:
    return [r for r in client.hvals("unacked") if queue.encode() in r]


def _hold(client: Client, log: str, n: int, kind: str = "diag.record") -> list[JobHandle]:
    return [client.enqueue(kind, {"log": log, "ms": HOLD_MS}) for _ in range(n)]


@pytest.mark.fast_transport(reason=OWNER_TAGS)
def test_a_killed_prefork_workers_jobs_run_again_within_seconds(
    redis_env: dict[str, str], redis_client: redis.Redis, fleets: list[Fleet], tmp_path: Path
) -> None:
    env = _env(redis_env, "kill")
    log = uuid.uuid4().hex
    first = _start(fleets, env, tmp_path, "first", PREFORK_PROCESSES)
    client = Client(fleets[0].app())
    try:
        handles = _hold(client, log, KILL_JOBS)
        owner = _owner(redis_client, first)
        wait_for(
            lambda: (
                len(_starts(redis_client, log)) == PREFORK_PROCESSES
                and _held(redis_client, owner) == HELD_BY_PREFORK
            ),
            SETTLE_S,
            "two jobs running and a spare reserved on the first worker",
        )
        running = set(_starts(redis_client, log))
        kill_tree(first)  # its sidecar too: only the heartbeat's expiry tells the fleet
        killed_at = time.monotonic()
        _start(fleets, env, tmp_path, "second", PREFORK_PROCESSES)
        redis_client.set(record_release_key(log), 1)
        results = [h.result(RECOVERY_DEADLINE_S) for h in handles]
        recovered_in = time.monotonic() - killed_at
    finally:
        client.close()

    assert all(r["attempt"] == 1 for r in results)
    starts = _starts(redis_client, log)
    assert set(starts) == {h.id for h in handles}  # nothing lost
    assert sum(starts.values()) - KILL_JOBS <= len(running)  # only mid-execution jobs twice
    assert all(starts[h.id] == 1 for h in handles if h.id not in running)
    assert recovered_in < RECOVERY_DEADLINE_S < VISIBILITY_S
    assert _held(redis_client, owner) == 0
    queue = env["TASKFLEET_CPU_QUEUE"]
    wait_for(lambda: not _unacked_of(redis_client, queue), SETTLE_S, "every delivery acked")


@pytest.mark.fast_transport(reason=OWNER_TAGS)
def test_a_slow_live_worker_is_not_robbed(
    redis_env: dict[str, str], redis_client: redis.Redis, fleets: list[Fleet], tmp_path: Path
) -> None:
    env = _env(redis_env, "slow")
    log = uuid.uuid4().hex
    slow = _start(fleets, env, tmp_path, "slow", 1)
    client = Client(fleets[0].app())
    try:
        [handle] = _hold(client, log, 1)
        owner = _owner(redis_client, slow)
        wait_for(
            lambda: _starts(redis_client, log)[handle.id] == 1 and _held(redis_client, owner),
            SETTLE_S,
            "the slow job to run on the first worker",
        )
        _start(fleets, env, tmp_path, "other", 1)  # a second reclaimer that could rob it

        def passes() -> int:
            return int(redis_client.hget(STATS_PREFIX + "unacked", "passes") or 0)

        since, passes_before = time.monotonic(), passes()
        wait_for(
            lambda: (
                time.monotonic() - since > 2 * HEARTBEAT_TTL_S
                and passes() >= passes_before + PASSES_WHILE_SLOW
            ),
            SETTLE_S,
            "the job to outlive two heartbeat TTLs under reclaim passes",
        )
        queue = env["TASKFLEET_CPU_QUEUE"]
        assert _held(redis_client, owner) == 1
        assert redis_queue_depths(redis_client, [queue])[queue] == 0
        assert _starts(redis_client, log)[handle.id] == 1
        redis_client.set(record_release_key(log), 1)
        assert handle.result(SETTLE_S)["attempt"] == 1
    finally:
        client.close()
    assert _starts(redis_client, log) == Counter({handle.id: 1})


@pytest.mark.fast_transport(reason=OWNER_TAGS)
@pytest.mark.parametrize("death", ["sigxcpu", "sigkill-tree"])
def test_a_dead_solo_workers_job_runs_again_within_seconds(
    death: str,
    redis_env: dict[str, str],
    redis_client: redis.Redis,
    fleets: list[Fleet],
    tmp_path: Path,
) -> None:
    env = _env(redis_env, "solo", TASKFLEET_CPU_POOL="solo")
    log = uuid.uuid4().hex
    solo = _start(fleets, env, tmp_path, "solo", 1)
    client = Client(fleets[0].app())
    try:
        [handle] = _hold(client, log, 1)
        owner = _owner(redis_client, solo)
        wait_for(
            lambda: _starts(redis_client, log)[handle.id] == 1 and _held(redis_client, owner),
            SETTLE_S,
            "the job to run on the first solo worker",
        )
        _start(fleets, env, tmp_path, "spare", 1)
        if death == "sigxcpu":  # what RLIMIT_CPU's backstop sends; the sidecar survives it
            os.kill(solo, signal.SIGXCPU)
        else:
            kill_tree(solo)
        wait_for(
            lambda: _starts(redis_client, log)[handle.id] == 2,
            RECOVERY_DEADLINE_S,
            "the job to run again on the other solo worker",
        )
        redis_client.set(record_release_key(log), 1)
        assert handle.result(SETTLE_S)["attempt"] == 1
    finally:
        client.close()
    assert fleets[0].procs["solo"].wait(SETTLE_S) != 0
    assert _held(redis_client, owner) == 0


@pytest.mark.fast_transport(reason=OWNER_TAGS)
def test_a_killed_green_workers_jobs_run_again_within_seconds(
    redis_env: dict[str, str], redis_client: redis.Redis, fleets: list[Fleet], tmp_path: Path
) -> None:
    env = _env(redis_env, "green")
    log = uuid.uuid4().hex
    green = _start(fleets, env, tmp_path, "green", GREENLETS, pool="io")
    client = Client(fleets[0].app())
    try:
        handles = _hold(client, log, GREENLETS, kind="diag.record_io")
        owner = _owner(redis_client, green)
        wait_for(
            lambda: (
                len(_starts(redis_client, log)) == GREENLETS
                and _held(redis_client, owner) == GREENLETS
            ),
            SETTLE_S,
            "every job running on the green worker",
        )
        kill_tree(green)
        _start(fleets, env, tmp_path, "other", GREENLETS, pool="io")
        redis_client.set(record_release_key(log), 1)
        assert all(h.result(RECOVERY_DEADLINE_S)["attempt"] == 1 for h in handles)
    finally:
        client.close()
    assert _starts(redis_client, log) == Counter({h.id: 2 for h in handles})
    assert _held(redis_client, owner) == 0


def _push_redelivered(client: redis.Redis, queue: str, job_id: str, payload: Any) -> None:
    """Put a ``diag.record`` job on ``queue`` as kombu restores one: marked redelivered."""
    message = TaskMessage.build(
        "diag.record", [payload], {}, job_id=job_id, priority=0, queue=queue
    )
    body = base64.b64encode(message.body).decode()
    envelope = message.redis_envelope_fields(body, next_delivery_tag())
    envelope["headers"]["redelivered"] = True
    envelope["properties"]["delivery_info"]["redelivered"] = True
    client.lpush(redis_priority_key(queue, 0), json.dumps(envelope))


def test_a_redelivered_job_whose_result_is_final_is_acked_not_run(
    redis_env: dict[str, str],
    redis_client: redis.Redis,
    engine: Any,
    fleets: list[Fleet],
    tmp_path: Path,
) -> None:
    env = _env(redis_env, "final", TASKFLEET_CPU_POOL="solo")  # one at a time, in order
    log = uuid.uuid4().hex
    _start(fleets, env, tmp_path, "solo", 1)
    app = fleets[0].app()
    done, failed, fresh = (str(uuid.uuid4()) for _ in range(3))
    app.backend.store_result(done, {"first": True}, states.SUCCESS)
    failure = {
        "status": states.FAILURE,
        "result": {"exc_type": "RuntimeError", "exc_message": ["boom"], "exc_module": "builtins"},
        "traceback": None,
        "children": [],
        "date_done": "2026-01-01T00:00:00+00:00",
        "task_id": failed,
    }
    failed_key = app.backend.get_key_for_task(failed).decode()
    upsert_results(engine, [ResultRow(failed_key, json.dumps(failure))])  # Postgres only
    assert redis_client.get(failed_key) is None
    queue = env["TASKFLEET_CPU_QUEUE"]
    for job_id in (done, failed, fresh):
        _push_redelivered(redis_client, queue, job_id, {"log": log})

    assert JobHandle(fresh, "diag.record", app).result(SETTLE_S)["attempt"] == 1
    assert _starts(redis_client, log) == Counter({fresh: 1})  # the finished two never ran
    assert app.backend.get_task_meta(done)["result"] == {"first": True}
    assert app.backend.get_task_meta(failed)["status"] == states.FAILURE
    wait_for(lambda: not _unacked_of(redis_client, queue), SETTLE_S, "all three acked")
    worker_log = (tmp_path / "solo.log").read_text(errors="replace")
    assert worker_log.count("redelivered but already finished") == 2


@pytest.mark.fast_transport(reason=OWNER_TAGS)
def test_a_poison_pill_is_dead_lettered_with_fast_reclaim(
    redis_env: dict[str, str], redis_client: redis.Redis, fleets: list[Fleet], tmp_path: Path
) -> None:
    env = _env(redis_env, "psn", TASKFLEET_CPU_POOL="solo")
    max_deliveries = int(env["TASKFLEET_RESILIENCE_MAX_DELIVERIES"])
    fleets.append(Fleet(env, tmp_path))
    settings = load_settings(**fleets[0].settings_overrides)
    # Each delivery kills one solo worker; all start at once (their start-ups overlap).
    fleets[0].start_all([(cpu_profile(settings, 1), f"solo{i}") for i in range(max_deliveries + 1)])
    app = fleets[0].app()
    client = Client(app)
    try:
        counter = f"t:reclaim-kill:{uuid.uuid4().hex}"
        handle = client.enqueue("diag.suicide", {"counter": counter})
        dlqs = DeadLetterQueues(load_settings(**fleets[0].settings_overrides))
        letter = wait_for(
            lambda: dlqs.show(handle.id), RECOVERY_DEADLINE_S, "the poison pill's dead letter"
        )
        assert letter.reason == "poison_pill"
        assert int(redis_client.get(counter_key(counter)) or 0) == max_deliveries
        # The dead letter is stored before the worker writes the FAILURE: wait for it.
        wait_for(lambda: handle.status() == states.FAILURE, SETTLE_S, "the FAILURE result")
        assert client.enqueue("cpu.noop", None).result(SETTLE_S) == {"ok": True}
    finally:
        client.close()


def _dead_owner_with_deliveries(wired: dict[str, Any], count: int) -> str:
    """Deliver ``count`` messages to a consumer owned by a fresh owner that never beats."""
    owner = owners.claim(owners.new_owner_id()).id
    try:
        channel = wired["conn"].channel()  # its QoS is built under the owner
        wired["publish"](count)
        for _ in range(count):
            assert channel.basic_get(wired["queue"].name, no_ack=False) is not None
    finally:
        owners.release()
    return owner


def _reclaimers(url: str, wired: dict[str, Any], n: int) -> list[Reclaimer]:
    channel = wired["channel"]
    options = {"unacked_key": channel.unacked_key, "unacked_index_key": channel.unacked_index_key}
    return [
        Reclaimer(Connection(url, transport=TRANSPORT_PATH, transport_options=options).channel())
        for _ in range(n)
    ]


def test_racing_reclaimers_restore_each_delivery_once(
    services: dict[str, str], redis_client: redis.Redis
) -> None:
    url = services["TASKFLEET_REDIS_URL"]
    with private_transport(url, redis_client, "race") as wired:
        first, second = _reclaimers(url, wired, 2)
        owner = _dead_owner_with_deliveries(wired, RACE_DELIVERIES)
        assert wired["unacked"]() == RACE_DELIVERIES
        assert _held(redis_client, owner) == RACE_DELIVERIES
        plans = [first.plan(owner), second.plan(owner)]  # both read before either moves
        assert [first.commit(plans[0]), second.commit(plans[1])] == [RACE_DELIVERIES, 0]
        _assert_restored_once(wired, redis_client, RACE_DELIVERIES)

        # The same race with threads, each reclaiming as a pass would.
        redis_client.delete(wired["queue"].name)
        owner = _dead_owner_with_deliveries(wired, RACE_DELIVERIES)
        barrier, counts = threading.Barrier(2), []

        def reclaim(reclaimer: Reclaimer) -> None:
            barrier.wait()
            counts.append(reclaimer.reclaim(owner))

        threads = [threading.Thread(target=reclaim, args=(r,)) for r in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(counts) == [0, RACE_DELIVERIES]
        _assert_restored_once(wired, redis_client, RACE_DELIVERIES)


def _assert_restored_once(wired: dict[str, Any], client: redis.Redis, count: int) -> None:
    """Every delivery back on the queue once, marked redelivered, none left unacked."""
    assert wired["unacked"]() == 0
    assert wired["indexed"]() == 0
    restored = [json.loads(m) for m in client.lrange(wired["queue"].name, 0, -1)]
    assert len(restored) == count
    assert all(m["headers"]["redelivered"] for m in restored)
    assert all(m["properties"]["delivery_info"]["redelivered"] for m in restored)
    assert len({m["properties"]["delivery_tag"] for m in restored}) == count


def test_a_live_owners_deliveries_are_never_restored(
    services: dict[str, str], redis_client: redis.Redis
) -> None:
    url = services["TASKFLEET_REDIS_URL"]
    with private_transport(url, redis_client, "live") as wired:
        [reclaimer] = _reclaimers(url, wired, 1)
        owner = _dead_owner_with_deliveries(wired, 3)
        redis_client.zadd(reclaimer.registry, {owner: time.time()})
        assert owner in reclaimer.dead_owners()
        reclaimer.restart_grace = 10**9  # as if Redis had just restarted: nobody is dead yet
        assert reclaimer.dead_owners() == []
        plan = reclaimer.plan(owner)
        redis_client.set(owners.alive_key(owner), 1, px=int(HEARTBEAT_TTL_S * 1000))
        try:
            assert reclaimer.commit(plan) == -1
            assert owner not in reclaimer.dead_owners()
            assert wired["unacked"]() == 3
            assert wired["depth"]() == 0
        finally:
            redis_client.delete(owners.alive_key(owner), owners.tags_key(owner))
            redis_client.zrem(reclaimer.registry, owner)


@pytest.mark.parametrize("atomic", [True, False], ids=["script", "brpop"])
@pytest.mark.parametrize("inline", [False, True], ids=["prefork", "solo"])
def test_the_owner_entry_rides_with_the_record_and_leaves_with_the_ack(
    inline: bool, atomic: bool, services: dict[str, str], redis_client: redis.Redis
) -> None:
    owner = owners.claim(owners.new_owner_id())
    bookkeeping.run_jobs_inline(inline)
    url = services["TASKFLEET_REDIS_URL"]
    try:
        with private_transport(url, redis_client, "own", atomic_fetch=atomic) as wired:
            wired["conn"].transport.batch_acks = True  # what register_with_event_loop sets
            received, poll = consume(wired)

            wired["publish"](1)
            wait_for(lambda: poll() and received, SETTLE_S, "the delivery")
            if atomic:  # the fetch script wrote the record before it popped the message
                assert _held(redis_client, owner.id) == 1
            elif not inline:  # the record waits for the next BRPOP, the owner entry with it
                assert _held(redis_client, owner.id) == 0
                poll()
            wait_for(lambda: _held(redis_client, owner.id) == 1, SETTLE_S, "the owner entry")
            [(tag, stamp)] = redis_client.hgetall(owner.tags_key).items()
            assert redis_client.zscore(wired["channel"].unacked_index_key, tag) == float(stamp)
            received[0].ack()
            wired["channel"].flush_bookkeeping()
            wait_for(lambda: poll() and _held(redis_client, owner.id) == 0, SETTLE_S, "removal")
            assert wired["unacked"]() == 0
    finally:
        bookkeeping.run_jobs_inline(False)
        owners.release()
        redis_client.delete(owner.tags_key)
