"""Nothing dangerous is registered by default (issue 19, item 4), on a real worker.

The worker here runs with the defaults (``TASKFLEET_DIAG_JOBS`` unset, then explicitly
false): it registers no ``diag.*`` job, so a ``diag.suicide`` sent with a plain ``send_task``
ends as an unknown task in the dead-letter queue and the worker keeps running. Its resize
commands refuse arguments out of range with a reply, and leave the pool as it was.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from taskfleet.config import load_settings
from taskfleet.config.autoscale import MAX_RESIZE_STEP
from taskfleet.resilience.diag_keys import counter_key
from taskfleet.resilience.dlq import DeadLetterQueues
from taskfleet.scheduler.control import (
    GROW_NOW_COMMAND,
    MAX_PREFORK_PROCESSES,
    SHRINK_NOW_COMMAND,
)
from taskfleet.workers.profiles import cpu_profile
from tests.support.waiting import wait_for
from tests.support.workers import Fleet

JOB_TIMEOUT_S = 30.0
REPLY_TIMEOUT_S = 5.0
CPU_PROCESSES = 1


@pytest.fixture(scope="module")
def fleet(redis_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """One prefork worker with the default settings, on queues of its own."""
    suffix = uuid.uuid4().hex[:6]
    env = {
        **redis_env,
        "TASKFLEET_CPU_POOL": "prefork",  # resized by remote control (the grow tests)
        "TASKFLEET_CPU_QUEUE": f"cpu-exp-{suffix}",
        "TASKFLEET_IO_QUEUE": f"io-exp-{suffix}",
        "TASKFLEET_DIAG_JOBS": "false",  # the default, stated: the test runner's env is not
        "TASKFLEET_NO_PERSISTER": "1",
    }
    running = Fleet(env, tmp_path_factory.mktemp("exposure"))
    try:
        running.start(
            cpu_profile(load_settings(**running.settings_overrides), CPU_PROCESSES), "cpu"
        )
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def app(fleet: Fleet) -> Iterator[Celery]:
    app = fleet.app()
    yield app
    app.close()


@functools.cache
def _node_of(pid: int, app: Celery) -> str:
    """The node name of the worker with ``pid`` (asked once: the broadcast waits its timeout,
    since every worker on the broker may answer)."""
    stats = app.control.inspect(timeout=REPLY_TIMEOUT_S).stats() or {}
    mine = [node for node, info in stats.items() if info.get("pid") == pid]
    assert mine, f"the test worker did not answer: {sorted(stats)}"
    return mine[0]


def _node(fleet: Fleet, app: Celery) -> str:
    """The node name of this module's worker (the one whose pid the fleet started)."""
    return str(_node_of(fleet.procs["cpu"].pid, app))


def _processes(app: Celery, node: str) -> int:
    stats = app.control.inspect([node], timeout=REPLY_TIMEOUT_S, limit=1).stats() or {}
    return len(stats[node]["pool"]["processes"])


def _command(app: Celery, node: str, name: str, n: Any) -> dict[str, Any]:
    replies = app.control.broadcast(
        name,
        arguments={"n": n},
        destination=[node],
        reply=True,
        timeout=REPLY_TIMEOUT_S,
        limit=1,
    )
    assert replies, f"{node} did not answer {name}"
    return dict(replies[0][node])


def test_a_default_worker_registers_no_diag_job(fleet: Fleet, app: Celery) -> None:
    node = _node(fleet, app)
    registered = (app.control.inspect([node], timeout=REPLY_TIMEOUT_S, limit=1).registered() or {})[
        node
    ]
    assert registered, "the worker registered nothing"
    assert not [name for name in registered if name.startswith("diag.")], registered
    assert "contract.notify" in registered


def test_a_diag_message_ends_as_an_unknown_task_and_the_worker_lives(
    fleet: Fleet, app: Celery, redis_client: redis.Redis
) -> None:
    node = _node(fleet, app)
    dlqs = DeadLetterQueues(load_settings(**fleet.settings_overrides))
    counter = f"t:exposure:{uuid.uuid4().hex}"
    sent = app.send_task(
        "diag.suicide", args=[{"counter": counter}], queue=fleet.env["TASKFLEET_CPU_QUEUE"]
    )
    letter = wait_for(lambda: dlqs.show(sent.id), JOB_TIMEOUT_S, "the unknown-task dead letter")
    assert letter.reason == "unknown_task"
    assert "diag.suicide" in f"{letter.kind} {letter.exc_message}"
    assert redis_client.get(counter_key(counter)) is None  # never ran
    assert fleet.procs["cpu"].poll() is None
    assert _node(fleet, app) == node  # the same worker answers, with its pool
    assert _processes(app, node) == CPU_PROCESSES


@pytest.mark.parametrize(
    ("command", "n"),
    [
        (GROW_NOW_COMMAND, 0),
        (GROW_NOW_COMMAND, -3),
        (GROW_NOW_COMMAND, MAX_RESIZE_STEP + 1),
        (GROW_NOW_COMMAND, 10**9),
        (GROW_NOW_COMMAND, "4"),
        (GROW_NOW_COMMAND, True),
        (SHRINK_NOW_COMMAND, 0),
        (SHRINK_NOW_COMMAND, MAX_RESIZE_STEP + 1),
    ],
)
def test_resize_commands_refuse_arguments_out_of_range(
    fleet: Fleet, app: Celery, command: str, n: Any
) -> None:
    node = _node(fleet, app)
    answer = _command(app, node, command, n)
    assert "error" in answer, answer
    assert f"1 to {MAX_RESIZE_STEP}" in answer["error"]
    assert _processes(app, node) == CPU_PROCESSES


def test_a_grow_past_the_pools_ceiling_is_refused(fleet: Fleet, app: Celery) -> None:
    node = _node(fleet, app)
    # Within the step: the pool's ceiling stops it (repeated steps cannot fork without end).
    assert MAX_PREFORK_PROCESSES <= MAX_RESIZE_STEP
    answer = _command(app, node, GROW_NOW_COMMAND, MAX_PREFORK_PROCESSES)
    assert "error" in answer, answer
    assert f"ceiling of {MAX_PREFORK_PROCESSES}" in answer["error"]
    assert _processes(app, node) == CPU_PROCESSES
