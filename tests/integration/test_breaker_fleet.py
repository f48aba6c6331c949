"""A fleet-wide circuit breaker on real workers: two processes, one opening, no lost jobs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from taskfleet.client import Client, JobFailed
from taskfleet.config import load_settings
from taskfleet.resilience.diag_keys import down_key, gate_key, hits_key
from taskfleet.resilience.dlq import DeadLetterQueues
from taskfleet.resilience.storage import RedisStorage
from taskfleet.resilience.testing_jobs import (
    DIAG_BREAKER,
    DIAG_BREAKER_CONFIG,
    DIAG_GUARDED_BREAKER,
)
from tests.integration.test_dead_letters import resilience_env, start_fleet
from tests.support.waiting import wait_for
from tests.support.workers import Fleet

JOBS = 12
JOB_TIMEOUT_S = 30.0
CPU_PROCESSES = 2


@pytest.fixture(scope="module")
def fleet(redis_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Two prefork processes sharing one breaker."""
    running = start_fleet(
        resilience_env(redis_env, "brk"), tmp_path_factory.mktemp("brk"), cpu=CPU_PROCESSES
    )
    try:
        yield running
    finally:
        running.stop()


def _outcome(client: Client, handle_id: str, kind: str) -> str:
    from taskfleet.client import JobHandle

    handle = JobHandle(handle_id, kind, client.app)
    try:
        handle.result(JOB_TIMEOUT_S)
    except JobFailed:
        return "dead"
    return "ok"


def test_breaker_opens_once_for_the_fleet_defers_then_recovers(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    storage = RedisStorage(redis_client)
    storage.reset(DIAG_BREAKER)
    client = Client(fleet.app())
    down = f"t:dep:{uuid.uuid4().hex}"
    redis_client.set(down_key(down), 1)
    gate = uuid.uuid4().hex
    handles = [client.enqueue("diag.dependency", {"down_key": down, "n": i}) for i in range(JOBS)]
    # Behind them, one held job per process: the deferred jobs (re-queued behind these) cannot
    # come back before the test has let the dependency recover, however slow the test is.
    held = client.enqueue_many(
        [("diag.gate", {"gate": gate, "i": i}) for i in range(CPU_PROCESSES)]
    )
    try:

        def first_calls() -> int:
            """Jobs whose first call is over: failed at the dependency, or deferred."""
            snapshot = storage.snapshot(DIAG_BREAKER)
            return int(snapshot["failures"]) + int(snapshot["rejected"])

        wait_for(lambda: first_calls() >= JOBS, JOB_TIMEOUT_S, "every job's first call")
        snapshot = storage.snapshot(DIAG_BREAKER)
        assert snapshot["state"] == "open", snapshot
        assert snapshot["rejected"] >= 1, snapshot  # deferred, not failed
        # Every call that reached the dependency is over (none is still in flight).
        hits = int(redis_client.get(hits_key(down)) or 0)
        assert hits == snapshot["failures"], snapshot
        # Both processes raced for the dependency; at most one extra call per process got in.
        assert (
            DIAG_BREAKER_CONFIG.fail_max <= hits <= DIAG_BREAKER_CONFIG.fail_max + CPU_PROCESSES - 1
        )
        redis_client.delete(down_key(down))  # the dependency recovers
    finally:
        redis_client.set(gate_key(gate), 1, ex=600)  # the held jobs end, deferred ones run
    assert all(h.result(JOB_TIMEOUT_S)["opened"] for h in held)
    outcomes = [_outcome(client, h.id, h.kind) for h in handles]
    snapshot = storage.snapshot(DIAG_BREAKER)
    assert snapshot["opened"] == 1
    assert snapshot["state"] == "closed"
    assert outcomes.count("dead") == hits  # only calls that reached the dead dependency died
    assert outcomes.count("ok") == JOBS - hits  # deferred, not failed, then run
    dead = DeadLetterQueues(load_settings(**fleet.settings_overrides)).list()
    assert {h.id for h in handles if _outcome(client, h.id, h.kind) == "dead"} <= {
        x.id for x in dead
    }


def test_fallback_answers_while_open(fleet: Fleet, redis_client: redis.Redis) -> None:
    storage = RedisStorage(redis_client)
    storage.reset(DIAG_GUARDED_BREAKER)
    client = Client(fleet.app())
    down = f"t:dep:{uuid.uuid4().hex}"
    redis_client.set(down_key(down), 1)
    handles = [client.enqueue("diag.guarded", {"down_key": down}) for _ in range(JOBS)]
    outcomes: list[object] = []
    for handle in handles:
        try:
            outcomes.append(handle.result(JOB_TIMEOUT_S))
        except JobFailed:
            outcomes.append("dead")
    hits = int(redis_client.get(hits_key(down)) or 0)
    assert outcomes.count("dead") == hits <= DIAG_BREAKER_CONFIG.fail_max + CPU_PROCESSES - 1
    assert outcomes.count({"fallback": True}) == JOBS - hits
