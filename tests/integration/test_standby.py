"""A standby solo CPU worker on real Redis: idle on the standby queue, promoted by its group.

``taskfleet up`` keeps one solo worker booted ahead of need (``taskfleet.workers.standby``);
the supervisor promotes it by registering its node name in the slot group. These tests run
the worker side for real: it takes no CPU job before, takes the CPU queue after, and a
promoted worker started again (after a crash) takes it back on its own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis

from taskfleet.client import Client
from taskfleet.config import load_settings
from taskfleet.routing.topology import Topology
from taskfleet.scheduler.slots import SlotGroup, SlotRegistry
from taskfleet.workers.profiles import cpu_profile
from taskfleet.workers.standby import STANDBY_GROUP_ENV
from tests.support.waiting import wait_for
from tests.support.workers import Fleet

RESULT_TIMEOUT_S = 30.0
QUEUES_DEADLINE_S = 30.0


@pytest.fixture
def standby(
    redis_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Fleet, str, str]]:
    """One standby solo worker of a fresh group on private queues: (fleet, node, group)."""
    suffix = uuid.uuid4().hex[:6]
    group = f"cpu-slots-test-{suffix}"
    env = {
        **redis_env,
        "TASKFLEET_CPU_POOL": "solo",
        "TASKFLEET_CPU_QUEUE": f"cpu-standby-{suffix}",
        "TASKFLEET_IO_QUEUE": f"io-standby-{suffix}",
        STANDBY_GROUP_ENV: group,
    }
    fleet = Fleet(env, tmp_path_factory.mktemp("standby"))
    settings = load_settings(**fleet.settings_overrides)
    profile = cpu_profile(settings)
    profile = replace(
        profile, name="cpu9", queues=(Topology.from_settings(settings).standby_queue,)
    )
    try:
        nodes = fleet.start_all([(profile, "cpu9")])
        yield fleet, nodes["cpu9"], group
    finally:
        fleet.stop()
        SlotRegistry(redis.Redis.from_url(redis_env["TASKFLEET_REDIS_URL"])).unregister(group)


def _queues(fleet: Fleet, node: str) -> list[str] | None:
    """The queues ``node`` consumes, as it answers (None: no answer yet)."""
    replies: dict[str, Any] = fleet.app().control.inspect([node], timeout=1.0).active_queues()
    if not replies or node not in replies:
        return None
    return sorted(q["name"] for q in replies[node])


def _register(redis_url: str, group: str, queue: str, nodes: tuple[str, ...]) -> None:
    registry = SlotRegistry(redis.Redis.from_url(redis_url))
    try:
        registry.register(SlotGroup(group, queue, len(nodes), nodes, time.time()))
    finally:
        registry.close()


def test_a_standby_takes_no_job_until_its_group_registers_it(
    standby: tuple[Fleet, str, str], redis_client: redis.Redis
) -> None:
    fleet, node, group = standby
    settings = load_settings(**fleet.settings_overrides)
    cpu_queue = settings.cpu_queue
    assert _queues(fleet, node) == [f"{cpu_queue}.standby"]

    handle = Client(fleet.app()).enqueue("cpu.noop", {})
    _register(fleet.env["TASKFLEET_REDIS_URL"], group, cpu_queue, ("someone-else@host",))
    # Another worker registered, and the standby still consumes only its own queue: the
    # job waits in the CPU queue.
    assert _queues(fleet, node) == [f"{cpu_queue}.standby"]
    assert sum(redis_client.llen(k) for k in redis_client.keys(f"{cpu_queue}*")) == 1

    _register(fleet.env["TASKFLEET_REDIS_URL"], group, cpu_queue, ("someone-else@host", node))
    assert handle.result(RESULT_TIMEOUT_S) == {"ok": True}
    wait_for(
        lambda: _queues(fleet, node) == [cpu_queue],
        QUEUES_DEADLINE_S,
        "the promoted worker to consume the CPU queue and no longer the standby queue",
    )


def test_a_promoted_worker_started_again_takes_its_queue_back(
    standby: tuple[Fleet, str, str],
) -> None:
    """The registration is the promotion's record: a restart finds it and promotes itself."""
    fleet, node, group = standby
    cpu_queue = load_settings(**fleet.settings_overrides).cpu_queue
    _register(fleet.env["TASKFLEET_REDIS_URL"], group, cpu_queue, (node,))
    wait_for(lambda: _queues(fleet, node) == [cpu_queue], QUEUES_DEADLINE_S, "the promotion")

    fleet.stop()  # a restart, as the supervisor does it: same command, same environment
    settings = load_settings(**fleet.settings_overrides)
    profile = replace(
        cpu_profile(settings),
        name="cpu9",
        queues=(Topology.from_settings(settings).standby_queue,),
    )
    assert fleet.start_all([(profile, "cpu9")], nodes={"cpu9": node}) == {"cpu9": node}
    handle = Client(fleet.app()).enqueue("cpu.noop", {})
    assert handle.result(RESULT_TIMEOUT_S) == {"ok": True}
    assert _queues(fleet, node) == [cpu_queue]
