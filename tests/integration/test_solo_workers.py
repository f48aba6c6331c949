"""``TASKFLEET_CPU_POOL=solo``: every CPU process a worker running its jobs inline, on real Redis.

They must do what prefork workers do for a job (result stored, message acked, limits kept),
without the spare reservation a prefork worker takes.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from taskfleet.client import Client
from taskfleet.config import load_settings
from taskfleet.handles import JobFailed, JobHandle
from taskfleet.workers.profiles import cpu_profiles
from tests.support.waiting import wait_for
from tests.support.workers import Fleet

WORKERS = 2
JOBS = 200
SOFT_LIMIT_S = 1
HARD_LIMIT_S = 2
#: Longer than the hard limit: a job that waits this long was never interrupted.
OVERRUN_MS = 20_000
RESULT_TIMEOUT_S = 30.0
ACK_TIMEOUT_S = 10.0
INSPECT_DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def solo_fleet(
    redis_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    suffix = uuid.uuid4().hex[:6]
    env = {
        **redis_env,
        "TASKFLEET_CPU_POOL": "solo",
        "TASKFLEET_CPU_QUEUE": f"cpu-solo-{suffix}",
        "TASKFLEET_IO_QUEUE": f"io-solo-{suffix}",
        "TASKFLEET_SOFT_TIME_LIMIT": str(SOFT_LIMIT_S),
        "TASKFLEET_HARD_TIME_LIMIT": str(HARD_LIMIT_S),
    }
    running = Fleet(env, tmp_path_factory.mktemp("solo-fleet"))
    settings = load_settings(**running.settings_overrides)
    try:
        running.start_all([(p, p.name) for p in cpu_profiles(settings, WORKERS)])
        yield running
    finally:
        running.stop()


def _expected_checksum(payload: dict[str, int]) -> str:
    digest = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    for _ in range(payload["rounds"]):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


def test_solo_workers_run_every_job_and_ack_it(
    solo_fleet: Fleet, redis_client: redis.Redis
) -> None:
    client = Client(solo_fleet.app())
    try:
        payloads = [{"rounds": 1 + i % 7, "n": i} for i in range(JOBS)]
        handles = client.enqueue_many([("cpu.checksum", p) for p in payloads])
        results = [h.result(RESULT_TIMEOUT_S) for h in handles]
    finally:
        client.close()

    assert [r["sha256"] for r in results] == [_expected_checksum(p) for p in payloads]
    queue = solo_fleet.env["TASKFLEET_CPU_QUEUE"].encode()

    def none_unacked() -> bool:
        return not any(queue in record for record in redis_client.hvals("unacked"))

    wait_for(none_unacked, ACK_TIMEOUT_S, "every solo job's delivery record to be acked")


def test_solo_workers_reserve_no_spare_job(solo_fleet: Fleet) -> None:
    pids = {proc.pid for proc in solo_fleet.procs.values()}
    app = solo_fleet.app()

    def ours() -> dict[str, dict[str, Any]]:
        """Our workers' stats, once every one of them answered one broadcast."""
        everyone = app.control.inspect(timeout=2.0).stats() or {}
        found = {node: info for node, info in everyone.items() if info.get("pid") in pids}
        return found if len(found) == WORKERS else {}

    # A reply that misses one broadcast's collection window is asked for again.
    stats = wait_for(ours, INSPECT_DEADLINE_S, f"all {WORKERS} solo workers to answer stats")
    for node, info in stats.items():
        assert "solo" in info["pool"]["implementation"], node
        assert info["prefetch_count"] == 1, node


def test_a_solo_worker_stops_a_job_at_its_time_limit_and_goes_on(solo_fleet: Fleet) -> None:
    app = solo_fleet.app()
    queue = solo_fleet.env["TASKFLEET_CPU_QUEUE"]
    overrun = app.send_task("io.wait", args=[{"ms": OVERRUN_MS}], queue=queue)
    with pytest.raises(JobFailed) as failed:
        JobHandle(overrun.id, "io.wait", app).result(RESULT_TIMEOUT_S)
    assert failed.value.error_type in {"SoftTimeLimitExceeded", "TimeLimitExceeded"}

    client = Client(app)
    try:
        assert client.enqueue("cpu.noop", {}).result(RESULT_TIMEOUT_S) == {"ok": True}
    finally:
        client.close()
