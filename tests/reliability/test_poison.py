"""Poison pills: a job that SIGKILLs its worker runs a bounded number of times, then dies.

Here on a prefork worker, whose parent survives its pool process; the default solo worker
dies with the job and is restarted by ``taskfleet up``
(``tests/integration/test_supervisor_restarts.py``).
"""

from __future__ import annotations

import uuid

import pytest
import redis

from taskfleet.client import Client
from taskfleet.config import load_settings
from taskfleet.resilience.diag_keys import counter_key
from taskfleet.resilience.dlq import DeadLetterQueues
from tests.integration.test_dead_letters import resilience_env, start_fleet
from tests.support.services import delete_amqp_queues
from tests.support.waiting import wait_for

MAX_DELIVERIES = 2  # resilience_env sets TASKFLEET_RESILIENCE_MAX_DELIVERIES=2


@pytest.mark.timeout(120)
@pytest.mark.parametrize("broker", ["redis", pytest.param("amqp", marks=pytest.mark.rabbitmq)])
def test_self_killing_job_is_dead_lettered_after_max_deliveries(
    broker: str,
    request: pytest.FixtureRequest,
    redis_client: redis.Redis,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    base_env: dict[str, str] = request.getfixturevalue(f"{broker}_env")
    env = {**resilience_env(base_env, f"psn-{broker}"), "TASKFLEET_CPU_POOL": "prefork"}
    fleet = start_fleet(env, tmp_path_factory.mktemp(f"psn-{broker}"), cpu=1)
    try:
        client = Client(fleet.app())
        dlqs = DeadLetterQueues(load_settings(**fleet.settings_overrides))
        counter = f"t:kill:{uuid.uuid4().hex}"
        handle = client.enqueue("diag.suicide", {"counter": counter})
        after = client.enqueue("cpu.noop", None)
        letter = wait_for(lambda: dlqs.show(handle.id), 60, "the poison pill's dead letter")
        assert letter.reason == "poison_pill"
        assert letter.attempts == MAX_DELIVERIES
        assert int(redis_client.get(counter_key(counter)) or 0) == MAX_DELIVERIES
        # The dead letter is stored before the worker writes the FAILURE: wait for it.
        wait_for(lambda: handle.status() == "FAILURE", 30, "the FAILURE result")
        assert after.result(30) == {"ok": True}  # the worker kept serving
    finally:
        fleet.stop()
        if broker == "amqp":
            delete_amqp_queues(env)
