"""Celery's per-job INFO lines: off by default, on with ``TASKFLEET_LOG_JOBS``; failures always.

A real solo worker logging at INFO, as ``taskfleet up`` runs it. Its jobs run in order, so
once a failing job sent last shows in the log, every line the earlier jobs would write is
there too.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskfleet.client import Client
from taskfleet.config import load_settings
from taskfleet.handles import JobFailed
from taskfleet.workers.profiles import cpu_profiles
from tests.support.waiting import wait_for
from tests.support.workers import Fleet

JOBS = 20
RESULT_TIMEOUT_S = 30.0
LOG_TIMEOUT_S = 15.0


@pytest.fixture(params=[False, True], ids=["default", "log-jobs"])
def logging_fleet(
    request: pytest.FixtureRequest, redis_env: dict[str, str], tmp_path: Path
) -> Iterator[tuple[Fleet, bool]]:
    suffix = uuid.uuid4().hex[:6]
    env = {
        **redis_env,
        "TASKFLEET_CPU_POOL": "solo",
        "TASKFLEET_CPU_QUEUE": f"cpu-logs-{suffix}",
        "TASKFLEET_IO_QUEUE": f"io-logs-{suffix}",
    }
    if request.param:
        env["TASKFLEET_LOG_JOBS"] = "true"
    fleet = Fleet(env, tmp_path)
    settings = load_settings(**fleet.settings_overrides)
    try:
        fleet.start_all([(p, p.name) for p in cpu_profiles(settings, 1)])
        yield fleet, request.param
    finally:
        fleet.stop()


def test_per_job_lines_follow_the_setting_and_failures_are_always_logged(
    logging_fleet: tuple[Fleet, bool],
) -> None:
    fleet, log_jobs = logging_fleet
    client = Client(fleet.app())
    try:
        handles = client.enqueue_many([("cpu.noop", {"n": i}) for i in range(JOBS)])
        assert [h.result(RESULT_TIMEOUT_S) for h in handles] == [{"ok": True}] * JOBS
        failing = client.enqueue("cpu.checksum", {"rounds": "many"})
        with pytest.raises(JobFailed):
            failing.result(RESULT_TIMEOUT_S)
    finally:
        client.close()

    (log_file,) = fleet.log_dir.glob("*.log")

    def log_with_the_failure() -> str:
        text = log_file.read_text(errors="replace")
        return text if failing.id in text else ""

    log = wait_for(log_with_the_failure, LOG_TIMEOUT_S, "the failing job's line in the log")
    logged = [h.id for h in handles if h.id in log]
    if log_jobs:
        assert logged == [h.id for h in handles]
        assert log.count("cpu.noop") >= 2 * JOBS  # received, then succeeded
        assert "succeeded in" in log
    else:
        assert logged == []
        assert "succeeded in" not in log
