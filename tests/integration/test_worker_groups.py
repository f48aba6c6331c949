"""Worker groups on real Redis and real workers: a producer's choice, and failover (new jobs
at enqueue, queued ones by the heartbeat sidecars' sweep).

One small fleet for the module: a solo CPU worker in group ``eu`` and one in ``us``, each
consuming only its group's queue (so the worker that ran a job tells which queue it was
in). Jobs are ``diag.record`` jobs, which log every execution: runs are counted per job id.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
import redis
from celery import Celery

from taskfleet.async_client import AsyncClient
from taskfleet.client import Client
from taskfleet.config import load_settings
from taskfleet.config.groups import GroupSettings, group_queue
from taskfleet.ratelimit.admission import WATCH_PREFIX
from taskfleet.resilience.diag_keys import record_log_key, record_release_key
from taskfleet.routing.amqp_groups import AmqpGroupReader
from taskfleet.routing.amqp_sweep import NO_CONSUMER_SINCE, sweep_amqp
from taskfleet.routing.groups import GroupRouter
from taskfleet.routing.owners import consumers_key
from taskfleet.workers.profiles import WorkerProfile, cpu_profile
from tests.integration.test_dead_letters import resilience_env
from tests.support.waiting import wait_for
from tests.support.workers import Fleet, kill_tree

GROUPS = ["eu", "us"]
HEARTBEAT_INTERVAL_S = 0.5
HEARTBEAT_TTL_S = 3.0
RECLAIM_INTERVAL_S = 0.5
REFRESH_MS = 50
DEADLINE_S = 30.0
#: Longest a held job holds (it is released long before).
HOLD_MS = 60_000
#: Jobs sent to ``eu`` before its worker is killed (one running, the others queued)...
BEFORE_KILL = 3
#: ...and while it is dead.
AFTER_KILL = 5
AFFINITY_KEYS = 8


def group_profile(env: dict[str, str], group: str) -> WorkerProfile:
    """A solo CPU worker consuming only ``group``'s CPU queue."""
    profile = cpu_profile(load_settings(cpu_pool="solo"), 1)
    return replace(profile, name=group, queues=(group_queue(env["TASKFLEET_CPU_QUEUE"], group),))


@pytest.fixture(scope="module")
def env(redis_env: dict[str, str]) -> dict[str, str]:
    return {
        **resilience_env(redis_env, "grp"),
        "TASKFLEET_CPU_POOL": "solo",
        "TASKFLEET_WORKER_GROUPS": json.dumps(GROUPS),
        "TASKFLEET_RESILIENCE_HEARTBEAT_INTERVAL": str(HEARTBEAT_INTERVAL_S),
        "TASKFLEET_RESILIENCE_HEARTBEAT_TTL": str(HEARTBEAT_TTL_S),
        "TASKFLEET_RESILIENCE_RECLAIM_INTERVAL": str(RECLAIM_INTERVAL_S),
    }


@pytest.fixture(scope="module")
def fleet(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    started = Fleet(env, tmp_path_factory.mktemp("groups-fleet"))
    try:
        started.start_all([(group_profile(env, g), g) for g in GROUPS])
        yield started
    finally:
        started.stop()


@pytest.fixture
def client(fleet: Fleet) -> Iterator[Client]:
    groups = GroupSettings(worker_groups=GROUPS, group_refresh_ms=REFRESH_MS)
    producer = Client(fleet.app(), groups=groups)
    assert producer.router is not None
    producer.router.live_ttl = HEARTBEAT_TTL_S  # the fleet's TTL, not this process's
    yield producer
    producer.close()


def healthy(client: Client, queue: str) -> bool:
    router = client.router
    assert router is not None
    return router.healthy(router.readings(), queue) and queue in router.readings()


def wait_served(client: Client, env: dict[str, str]) -> None:
    cpu = env["TASKFLEET_CPU_QUEUE"]
    for group in GROUPS:
        queue = group_queue(cpu, group)
        wait_for(lambda q=queue: healthy(client, q), DEADLINE_S, f"a live consumer of {queue}")


def entries(client: redis.Redis, log: str, phase: str) -> Counter[str]:
    rows = [json.loads(e) for e in client.lrange(record_log_key(log), 0, -1)]
    return Counter(r["id"] for r in rows if r["phase"] == phase)


def test_a_producer_picks_the_group_by_preference_and_by_affinity(
    fleet: Fleet, client: Client, env: dict[str, str]
) -> None:
    wait_served(client, env)
    log = uuid.uuid4().hex
    pids = {g: fleet.procs[g].pid for g in GROUPS}
    for group in GROUPS:
        handle = client.enqueue("diag.record", {"log": log}, group=group)
        assert handle.result(DEADLINE_S)["pid"] == pids[group]
    ran: dict[str, int] = {}
    for key in (f"key-{i}" for i in range(AFFINITY_KEYS)):
        first, again = (client.enqueue("diag.record", {"log": log}, affinity=key) for _ in range(2))
        ran[key] = first.result(DEADLINE_S)["pid"]
        assert again.result(DEADLINE_S)["pid"] == ran[key]  # sticky
    assert set(ran.values()) == set(pids.values())  # keys spread over both groups


def test_the_async_client_picks_groups_the_same_way(
    fleet: Fleet, client: Client, env: dict[str, str]
) -> None:
    wait_served(client, env)
    log = uuid.uuid4().hex

    async def run() -> tuple[list[int], list[int]]:
        async_client = AsyncClient(client)
        try:
            asked = [
                await async_client.enqueue("diag.record", {"log": log}, group=g) for g in GROUPS
            ]
            keyed = [
                await async_client.enqueue("diag.record", {"log": log}, affinity="same-key")
                for _ in range(3)
            ]
            return (
                [(await async_client.result(h, DEADLINE_S))["pid"] for h in asked],
                [(await async_client.result(h, DEADLINE_S))["pid"] for h in keyed],
            )
        finally:
            await async_client.close()

    asked, keyed = asyncio.run(run())
    assert asked == [fleet.procs[g].pid for g in GROUPS]
    assert len(set(keyed)) == 1  # one key, one group


def test_a_bare_send_task_targets_a_group_by_its_queue(fleet: Fleet, env: dict[str, str]) -> None:
    bare = Celery(broker=env["TASKFLEET_BROKER_URL"], backend=env["TASKFLEET_REDIS_URL"])
    bare.conf.update(
        task_serializer="json", accept_content=["json"], result_accept_content=["json"]
    )
    queue = group_queue(env["TASKFLEET_CPU_QUEUE"], "us")
    try:
        result = bare.send_task("diag.record", args=[{"log": uuid.uuid4().hex}], queue=queue)
        assert result.get(timeout=DEADLINE_S)["pid"] == fleet.procs["us"].pid
    finally:
        bare.close()


def test_least_backlog_from_a_cached_reading(redis_client: redis.Redis) -> None:
    base = f"lb-{uuid.uuid4().hex[:8]}"
    settings = GroupSettings(worker_groups=GROUPS, group_refresh_ms=1)
    router = GroupRouter(redis_client, [base], settings, live_ttl=HEARTBEAT_TTL_S)
    eu, us = (group_queue(base, g) for g in GROUPS)
    keys = [eu, us, consumers_key(eu), consumers_key(us), WATCH_PREFIX + eu, WATCH_PREFIX + us]
    try:
        for queue in (eu, us):
            redis_client.zadd(consumers_key(queue), {"someone": time.time() + DEADLINE_S})
        redis_client.lpush(eu, *[b"{}"] * 3)
        assert wait_for(lambda: router.route(base) == us, DEADLINE_S, "us, the emptier")
        redis_client.lpush(us, *[b"{}"] * 5)
        assert wait_for(lambda: router.route(base) == eu, DEADLINE_S, "eu, now the emptier")
        redis_client.delete(consumers_key(eu))  # eu loses its consumer: us despite its backlog
        assert wait_for(lambda: router.route(base) == us, DEADLINE_S, "us, the only live one")
    finally:
        redis_client.delete(*keys)


def test_a_group_whose_workers_are_killed_fails_over_and_nothing_is_lost(
    fleet: Fleet, client: Client, env: dict[str, str], redis_client: redis.Redis
) -> None:
    wait_served(client, env)
    log = uuid.uuid4().hex
    held = {"log": log, "ms": HOLD_MS}
    before = [client.enqueue("diag.record", held, group="eu") for _ in range(BEFORE_KILL)]
    wait_for(lambda: entries(redis_client, log, "start"), DEADLINE_S, "eu running a held job")
    kill_tree(fleet.procs["eu"].pid)  # its sidecar too: only the heartbeat's expiry tells
    redis_client.set(record_release_key(log), 1)  # the killed run never ends; reruns do
    cpu = env["TASKFLEET_CPU_QUEUE"]
    eu_queue = group_queue(cpu, "eu")
    wait_for(lambda: not healthy(client, eu_queue), DEADLINE_S, "eu seen without consumer")
    assert client.router is not None
    assert client.router.route(cpu, "eu") == group_queue(cpu, "us")  # failover at enqueue
    after = [client.enqueue("diag.record", {"log": log}, group="eu") for _ in range(AFTER_KILL)]
    us_pid = fleet.procs["us"].pid
    assert [h.result(DEADLINE_S)["pid"] for h in after] == [us_pid] * AFTER_KILL
    try:  # eu's queued jobs, and the one it was running, are swept to us: no eu returns
        assert {h.result(DEADLINE_S)["pid"] for h in before} == {us_pid}
    finally:
        fleet.start(group_profile(env, "eu"), "eu")  # for the module's other tests
    sent = {h.id for h in before + after}
    starts, done = entries(redis_client, log, "start"), entries(redis_client, log, "done")
    ok = len(sent & set(done))
    lost = len(sent - set(done))
    duplicated = sum(1 for job in sent if starts[job] > 1)
    print(f"failover: sent={len(sent)} ok={ok} lost={lost} duplicated={duplicated}")
    assert (ok, lost) == (len(sent), 0)
    assert duplicated <= 1  # at most the job running when eu was killed, at least once
    assert all(starts[h.id] == 1 for h in after)


@pytest.mark.rabbitmq
def test_on_rabbitmq_the_broker_s_own_consumers_decide_the_failover(
    amqp_env: dict[str, str],
) -> None:
    from kombu import Connection, Consumer, Queue

    url = amqp_env["TASKFLEET_BROKER_URL"]
    base = f"cpu-grp-amqp-{uuid.uuid4().hex[:8]}"
    eu, us = (group_queue(base, g) for g in GROUPS)
    settings = GroupSettings(worker_groups=GROUPS, group_refresh_ms=1)
    reader = AmqpGroupReader(url)
    router = GroupRouter(None, [base], settings, live_ttl=HEARTBEAT_TTL_S, reader=reader)

    def ignore(body: object, message: object) -> None:
        """A consumer that never takes a delivery (the connection is never drained)."""

    def routed_to(expected: str) -> Callable[[], bool]:
        return lambda: router.route(base, "eu") == expected

    # Never declared: no group has a consumer, so the one asked for is kept.
    assert reader([eu, us]) == {eu: (0, 0.0, 0), us: (0, 0.0, 0)}
    assert router.route(base, "eu") == eu
    with Connection(url) as setup, Connection(url) as us_worker, Connection(url) as eu_worker:
        queues = {name: Queue(name, channel=setup.default_channel) for name in (eu, us)}
        for queue in queues.values():
            queue.declare()
        try:
            with setup.Producer() as producer:
                for i in range(2):
                    producer.publish({"i": i}, routing_key=eu, retry=True)
            Consumer(us_worker.channel(), [Queue(us)], callbacks=[ignore]).consume()
            wait_for(routed_to(us), DEADLINE_S, "eu (no consumer) to fail over to us")
            assert reader([eu])[eu].backlog == 2
            Consumer(eu_worker.channel(), [Queue(eu)], callbacks=[ignore]).consume()
            wait_for(routed_to(eu), DEADLINE_S, "eu to be chosen once it has a consumer")
            eu_worker.release()  # the worker's connection is gone, as when it is killed
            wait_for(routed_to(us), DEADLINE_S, "eu to fail over again")
        finally:
            for queue in queues.values():
                queue.delete()
            reader.close()


@pytest.mark.rabbitmq
def test_on_rabbitmq_the_beat_s_sweep_moves_a_dead_group_s_jobs(
    amqp_env: dict[str, str], redis_client: redis.Redis
) -> None:
    from kombu import Connection, Consumer, Queue

    url = amqp_env["TASKFLEET_BROKER_URL"]
    base = f"cpu-sweep-amqp-{uuid.uuid4().hex[:8]}"
    eu, us = (group_queue(base, g) for g in GROUPS)
    pools = {base: [eu, us]}
    grace = HEARTBEAT_TTL_S * 2
    reader = AmqpGroupReader(url)
    mover = Connection(url, transport_options={"confirm_publish": True})
    args = {"x-max-priority": 9}
    with Connection(url) as setup, Connection(url) as us_worker:
        queues = [
            Queue(n, channel=setup.default_channel, queue_arguments=args) for n in pools[base]
        ]
        for queue in queues:
            queue.declare()
        try:
            with setup.Producer() as producer:
                for i, priority in enumerate([1, 5, 9, 5, 1]):
                    producer.publish({"i": i}, routing_key=eu, priority=priority, retry=True)
            consumer = Consumer(us_worker.channel(), [Queue(us, queue_arguments=args)])
            consumer.register_callback(lambda body, message: None)
            consumer.consume()
            wait_for(lambda: reader([us])[us].consumers == 1, DEADLINE_S, "us's consumer")

            def sweep(now: float) -> int:
                return sweep_amqp(reader, mover, redis_client, pools, now=now, ttl=HEARTBEAT_TTL_S)

            assert sweep(1000.0) == 0  # eu first seen without a consumer: not yet
            assert sweep(1000.0 + grace / 2) == 0
            assert reader([eu])[eu].backlog == 5
            assert sweep(1000.0 + grace) == 5
            assert sweep(1000.0 + grace + 1) == 0  # nothing left to move
            us_worker.release()  # its unacked deliveries go back to the queue
            wait_for(lambda: reader([us])[us] == (5, 0.0, 0), DEADLINE_S, "5 jobs in us")
            with setup.SimpleQueue(Queue(us, queue_arguments=args)) as moved:
                got = [moved.get(timeout=DEADLINE_S) for _ in range(5)]
            assert sorted(m.payload["i"] for m in got) == [0, 1, 2, 3, 4]
            assert [m.properties["priority"] for m in got] == [9, 5, 5, 1, 1]  # kept
            for message in got:
                message.ack()
        finally:
            for queue in queues:
                queue.delete()
            redis_client.hdel(NO_CONSUMER_SINCE, eu, us)
            reader.close()
            mover.release()
