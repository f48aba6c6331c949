"""Result writes that do not wait for Redis's answer, on a real Redis.

A prefork pool process sends each result write and moves on; the answer is read before the
next write, by an idle check, or at close. These tests check that every write lands, that a
refused or cut-off write is stored again, and that the process reads its own writes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import states

from taskfleet.results import pipelining
from taskfleet.results.backend import STORE_RESULT_LUA, TaskfleetResultBackend
from taskfleet.results.stream import PERSIST_STREAM
from tests.support.waiting import wait_for
from tests.support.workers import Fleet

pytestmark = pytest.mark.usefixtures("clean_state")

#: Bound on the idle check confirming a write (it runs IDLE_CONFIRM_S after the last one).
CONFIRMED_WITHIN_S = 5.0


class StillClock:
    """The idle check's clock: it stands still unless a test moves it, so a write stays
    unconfirmed until the test says, however long the test takes between two lines."""

    def __init__(self) -> None:
        self.now = 0.0  # moved by exact steps: 0.0 + IDLE_CONFIRM_S is IDLE_CONFIRM_S

    def __call__(self) -> float:
        return self.now


class Recorder:
    """``store_now`` that really stores (the backend's own script) and counts the calls."""

    def __init__(self, client: redis.Redis) -> None:
        self.script = client.register_script(STORE_RESULT_LUA)
        self.calls: list[list[str]] = []

    def __call__(self, keys: list[str], args: list[Any]) -> None:
        self.calls.append(keys)
        self.script(keys=keys, args=args)


@pytest.fixture
def writes(redis_client: redis.Redis) -> Iterator[dict[str, Any]]:
    recorder = Recorder(redis_client)
    clock = StillClock()
    pipelined = pipelining.PipelinedScript(redis_client, STORE_RESULT_LUA, recorder, clock)
    keys: list[str] = []

    def send(status: str = states.SUCCESS) -> str:
        key = f"celery-task-meta-pipelined-{uuid.uuid4().hex}"
        keys.append(key)
        pipelined.send([key, PERSIST_STREAM], [json.dumps({"status": status}), 60])
        return key

    yield {"pipelined": pipelined, "send": send, "recorder": recorder, "clock": clock}
    pipelined.close()


def _status(client: redis.Redis, key: str) -> str | None:
    raw = client.get(key)
    return None if raw is None else str(json.loads(raw)["status"])


def test_writes_land_and_are_confirmed_by_the_next_write(
    writes: dict[str, Any], redis_client: redis.Redis
) -> None:
    first = writes["send"]()
    assert len(writes["pipelined"]._unconfirmed) == 1  # sent, answer not read
    second = writes["send"]()
    assert len(writes["pipelined"]._unconfirmed) == 1  # the first was confirmed on the way
    writes["pipelined"].confirm()
    assert writes["pipelined"]._unconfirmed == []
    assert _status(redis_client, first) == _status(redis_client, second) == states.SUCCESS
    assert writes["recorder"].calls == []  # nothing needed storing again


def test_an_idle_process_confirms_its_last_write_on_its_own(writes: dict[str, Any]) -> None:
    writes["send"]()
    assert len(writes["pipelined"]._unconfirmed) == 1  # not idle yet: the clock stands still
    writes["clock"].now += pipelining.IDLE_CONFIRM_S
    wait_for(
        lambda: writes["pipelined"]._unconfirmed == [],
        CONFIRMED_WITHIN_S,
        "the idle check to confirm the write",
    )


def test_a_refused_write_is_stored_again(writes: dict[str, Any], redis_client: redis.Redis) -> None:
    redis_client.script_flush()  # the next EVALSHA is answered NOSCRIPT
    key = writes["send"]()
    assert redis_client.get(key) is None  # refused: nothing written
    writes["pipelined"].confirm()
    assert writes["recorder"].calls == [[key, PERSIST_STREAM]]
    assert _status(redis_client, key) == states.SUCCESS


def test_a_cut_connection_stores_its_unconfirmed_writes_again(
    writes: dict[str, Any], redis_client: redis.Redis
) -> None:
    key = writes["send"]()
    writes["pipelined"]._writes._connection.disconnect()  # the link drops before the answer is read
    writes["pipelined"].confirm()
    assert writes["recorder"].calls == [[key, PERSIST_STREAM]]
    assert _status(redis_client, key) == states.SUCCESS
    later = writes["send"]()  # a new connection is opened for the next write
    writes["pipelined"].confirm()
    assert _status(redis_client, later) == states.SUCCESS


def test_a_stored_success_is_never_replaced_by_a_write_sent_again(
    writes: dict[str, Any], redis_client: redis.Redis
) -> None:
    key = writes["send"](states.SUCCESS)
    writes["pipelined"].confirm()
    writes["recorder"]([key, PERSIST_STREAM], [json.dumps({"status": states.FAILURE}), 60])
    assert _status(redis_client, key) == states.SUCCESS


def test_the_backend_reads_its_own_pipelined_writes(redis_fleet: Fleet) -> None:
    backend = redis_fleet.app().backend
    assert isinstance(backend, TaskfleetResultBackend)
    backend.pipeline_stores()
    try:
        job_id = f"pipelined-{uuid.uuid4().hex}"
        backend.store_result(job_id, {"ok": True}, states.SUCCESS)
        assert backend.get_task_meta(job_id)["result"] == {"ok": True}
    finally:
        backend.confirm_stores(close=True)
    assert backend._pipelined is None


@pytest.mark.parametrize("enabled", [True, False])
def test_pool_processes_pipeline_their_writes_unless_switched_off(
    services: dict[str, str], monkeypatch: pytest.MonkeyPatch, enabled: bool
) -> None:
    """What ``worker_process_init`` / ``worker_process_shutdown`` do in each pool process."""
    from taskfleet.app import app
    from taskfleet.config.settings import get_settings
    from taskfleet.workers import signals

    monkeypatch.setenv("TASKFLEET_PIPELINE_RESULT_WRITES", str(enabled).lower())
    get_settings.cache_clear()
    monkeypatch.setattr(app, "taskfleet_settings", get_settings())
    backend = app.backend
    assert isinstance(backend, TaskfleetResultBackend)
    signals.open_child_pools()
    try:
        assert (backend._pipelined is not None) is enabled
    finally:
        signals.close_child_pools()
    assert backend._pipelined is None
    get_settings.cache_clear()


def test_an_earlier_write_that_cannot_be_stored_never_fails_the_next_job(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(keys: list[str], args: list[Any]) -> None:
        raise redis.ConnectionError("Redis is gone for good")

    pipelined = pipelining.PipelinedScript(redis_client, STORE_RESULT_LUA, refuse)
    try:
        redis_client.script_flush()  # the first write is answered NOSCRIPT, its retry fails
        first = f"celery-task-meta-pipelined-{uuid.uuid4().hex}"
        pipelined.send([first, PERSIST_STREAM], [json.dumps({"status": states.SUCCESS}), 60])
        redis_client.script_load(STORE_RESULT_LUA)
        second = f"celery-task-meta-pipelined-{uuid.uuid4().hex}"
        pipelined.send([second, PERSIST_STREAM], [json.dumps({"status": states.SUCCESS}), 60])
        pipelined.confirm()
    finally:
        pipelined.close()
    assert _status(redis_client, second) == states.SUCCESS
    assert redis_client.get(first) is None
    assert f"result {first} could not be stored" in caplog.text


@pytest.mark.parametrize("enabled", [True, False])
def test_solo_workers_pipeline_their_writes_unless_switched_off(
    services: dict[str, str], monkeypatch: pytest.MonkeyPatch, enabled: bool
) -> None:
    """What ``worker_init`` / ``worker_shutdown`` do in a solo worker, which runs its jobs in
    its main process: pipelined like a pool process, and landed at shutdown."""
    from celery.concurrency import get_implementation

    from taskfleet.app import app
    from taskfleet.config.settings import get_settings
    from taskfleet.workers import signals

    class SoloWorker:
        pool_cls = get_implementation("solo")
        concurrency = 1

    monkeypatch.setenv("TASKFLEET_PIPELINE_RESULT_WRITES", str(enabled).lower())
    monkeypatch.setenv(signals.DISABLE_PERSISTER_ENV, "1")
    get_settings.cache_clear()
    monkeypatch.setattr(app, "taskfleet_settings", get_settings())
    backend = app.backend
    assert isinstance(backend, TaskfleetResultBackend)
    signals.serve(app)
    signals.open_solo_pools(sender=SoloWorker())
    try:
        assert (backend._pipelined is not None) is enabled
        task_id = f"solo-{uuid.uuid4()}"
        backend.store_result(task_id, {"ok": 1}, states.SUCCESS)
    finally:
        signals.stop_main_process()
    assert backend._pipelined is None
    assert backend.client.get(backend.get_key_for_task(task_id)) is not None
    get_settings.cache_clear()


def test_writes_held_by_a_batch_go_out_together_when_it_ends(
    writes: dict[str, Any], redis_client: redis.Redis
) -> None:
    with pipelining.coalesced():
        keys = [writes["send"]() for _ in range(3)]
        assert writes["pipelined"]._writes.owed == 0  # nothing sent yet
        assert redis_client.exists(*keys) == 0
    assert writes["pipelined"]._writes.owed == 3  # one send, three replies owed
    writes["pipelined"].confirm()
    assert [_status(redis_client, key) for key in keys] == [states.SUCCESS] * 3
    assert writes["recorder"].calls == []


def test_held_writes_whose_link_is_down_are_stored_one_by_one(
    writes: dict[str, Any], redis_client: redis.Redis
) -> None:
    late = writes["pipelined"]._writes
    working_pool = late.pool
    late.drop()
    late.pool = redis.ConnectionPool(host="127.0.0.1", port=_closed_port())  # refuses
    try:
        with pipelining.coalesced():
            keys = [writes["send"]() for _ in range(2)]
    finally:
        late.pool = working_pool
    assert writes["recorder"].calls == [[key, PERSIST_STREAM] for key in keys]
    assert [_status(redis_client, key) for key in keys] == [states.SUCCESS] * 2


def test_held_writes_that_cannot_be_stored_stay_held_for_the_next_flush(
    redis_client: redis.Redis,
) -> None:
    recorder = Recorder(redis_client)
    down = {"now": True}

    def store_now(keys: list[str], args: list[Any]) -> None:
        if down["now"]:
            raise redis.ConnectionError("Redis is down")
        recorder(keys, args)

    pipelined = pipelining.PipelinedScript(redis_client, STORE_RESULT_LUA, store_now)
    late = pipelined._writes
    working_pool = late.pool
    late.pool = redis.ConnectionPool(host="127.0.0.1", port=_closed_port())
    key = f"celery-task-meta-pipelined-{uuid.uuid4().hex}"
    try:
        with pytest.raises(redis.ConnectionError), pipelining.coalesced():
            pipelined.send([key, PERSIST_STREAM], [json.dumps({"status": states.SUCCESS}), 60])
        assert redis_client.get(key) is None
        late.pool, down["now"] = working_pool, False
        pipelining.flush_coalesced()  # what the next acknowledgement does first
        pipelined.confirm()
    finally:
        pipelined.close()
    assert _status(redis_client, key) == states.SUCCESS


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
