"""A worker keeps its result persister running: started again when it is killed, and when
it stalls (SIGSTOP), on a real worker with real Redis and Postgres."""

from __future__ import annotations

import json
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace

import psutil
import pytest
import redis
from sqlalchemy import Engine, text

from taskfleet.client import Client
from taskfleet.config import load_settings
from taskfleet.results.persister import ResultPersister
from taskfleet.results.stream import PERSIST_GROUP
from taskfleet.workers.persister_watch import STUCK_ENV, PersisterWatch
from taskfleet.workers.profiles import cpu_profile
from tests.support.waiting import wait_for
from tests.support.workers import Fleet

STUCK_S = 3
DEADLINE_S = 60.0
PERSISTER_MODULE = "taskfleet.results.persister"


@pytest.fixture
def fleet(redis_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tag = uuid.uuid4().hex[:6]
    env = {
        **redis_env,
        "TASKFLEET_CPU_QUEUE": f"cpu-pw-{tag}",
        "TASKFLEET_IO_QUEUE": f"io-pw-{tag}",
        "TASKFLEET_CPU_POOL": "solo",
        STUCK_ENV: str(STUCK_S),
    }
    started = Fleet(env, tmp_path_factory.mktemp("persister-watch"))
    profile = cpu_profile(load_settings(cpu_pool="solo", cpu_queue=env["TASKFLEET_CPU_QUEUE"]), 1)
    try:
        started.start_all([(replace(profile, name="cpu"), "cpu")])
        yield started
    finally:
        started.stop()


def persister_pid(fleet: Fleet) -> int | None:
    """The worker's persister process, if one runs (not stopped)."""
    worker = psutil.Process(fleet.procs["cpu"].pid)
    for child in worker.children():
        try:
            if PERSISTER_MODULE in child.cmdline() and child.status() != psutil.STATUS_STOPPED:
                return child.pid
        except psutil.NoSuchProcess:
            continue
    return None


def landed(fleet: Fleet, engine: Engine) -> None:
    """A job's result reaches Postgres (through the persister)."""
    client = Client(fleet.app())
    handle = client.enqueue("cpu.checksum", {"rounds": 1})
    handle.result(DEADLINE_S)
    key = f"celery-task-meta-{handle.id}"

    def row() -> bool:
        with engine.connect() as conn:
            found = conn.execute(text("SELECT 1 FROM taskfleet_results WHERE key = :k"), {"k": key})
            return found.first() is not None

    wait_for(row, DEADLINE_S, f"the result of {handle.id} in Postgres")
    client.close()


def test_a_killed_or_stalled_persister_is_started_again(fleet: Fleet, engine: Engine) -> None:
    first = wait_for(lambda: persister_pid(fleet), DEADLINE_S, "the persister")
    landed(fleet, engine)
    os.kill(first, signal.SIGKILL)
    second = wait_for(
        lambda: (pid := persister_pid(fleet)) not in (None, first) and pid,
        DEADLINE_S,
        "a new persister after SIGKILL",
    )
    landed(fleet, engine)
    os.kill(second, signal.SIGSTOP)  # alive, but makes no progress
    third = wait_for(
        lambda: (pid := persister_pid(fleet)) not in (None, first, second) and pid,
        DEADLINE_S,
        f"a new persister after {STUCK_S}s without progress",
    )
    assert not psutil.pid_exists(second) or psutil.Process(second).status() == psutil.STATUS_ZOMBIE
    landed(fleet, engine)
    log = (fleet.log_dir / "cpu.log").read_text(errors="replace")
    assert f"result persister (pid {first}) exited with status -9; started pid {second}" in log
    assert f"result persister (pid {second}) made no progress" in log
    assert f"started pid {third}" in log


def test_a_consumer_group_deleted_under_the_persister_is_recreated(
    redis_client: redis.Redis, engine: Engine
) -> None:
    stream = f"tf-pw-{uuid.uuid4().hex[:8]}"
    persister = ResultPersister(
        redis_client,
        engine,
        stream=stream,
        quarantine_key=f"{stream}-q",
        retry_delay_s=0.05,
        max_retry_delay_s=0.2,
    )

    def add_and_land(key: str) -> None:
        meta = {"status": "SUCCESS", "task_id": key, "name": "test.add", "result": 1}
        redis_client.xadd(stream, {"key": key, "value": json.dumps(meta), "expires": 3600})

        def row() -> bool:
            with engine.connect() as conn:
                query = text("SELECT 1 FROM taskfleet_results WHERE key = :k")
                return conn.execute(query, {"k": key}).first() is not None

        wait_for(row, DEADLINE_S, f"{key} in Postgres")

    persister.start()
    try:
        add_and_land(f"celery-task-meta-{uuid.uuid4()}")
        assert redis_client.xgroup_destroy(stream, PERSIST_GROUP) == 1
        add_and_land(f"celery-task-meta-{uuid.uuid4()}")  # read again: the group is back
        groups = [g["name"] for g in redis_client.xinfo_groups(stream)]
        assert groups in ([PERSIST_GROUP], [PERSIST_GROUP.encode()])
    finally:
        persister.stop()
        redis_client.delete(stream, f"{stream}-q")


def test_a_removed_heartbeat_file_is_recreated_not_taken_for_a_stall() -> None:
    now = [1000.0]
    watch = PersisterWatch(
        [sys.executable, "-c", "import time; time.sleep(60)"], stuck_s=5, clock=lambda: now[0]
    )
    watch.proc = watch._spawn()
    first = watch.proc.pid
    try:
        os.utime(watch.heartbeat, (now[0], now[0]))
        watch.heartbeat.unlink()
        assert watch.check() is None  # recreated, counted from now
        assert watch.heartbeat.exists()
        assert watch.proc.pid == first
        now[0] = watch.heartbeat.stat().st_mtime + 6
        assert watch.check() is not None  # a stall after that is still seen
        assert watch.proc.pid != first
    finally:
        watch.stop(5)
