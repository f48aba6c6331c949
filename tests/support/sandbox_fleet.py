"""A one-process CPU worker for sandbox tests, and a runner of ``sandbox.run`` jobs on it."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import taskfleet.tasks.sandbox_jobs  # noqa: F401 - registers sandbox.run for the client's router
from taskfleet.client import Client
from taskfleet.config import load_settings
from taskfleet.config.sandbox import get_sandbox_settings
from taskfleet.sandbox import namespaces_available
from taskfleet.sandbox.isolation import sandbox_processes
from taskfleet.workers.profiles import cpu_profile
from tests.support.services import missing_service
from tests.support.waiting import wait_for
from tests.support.workers import Fleet

RESULT_TIMEOUT_S = 30.0
#: How long the run's processes may take to be gone once its result is in.
CLEANUP_TIMEOUT_S = 5.0


def require_namespaces() -> None:
    """Skip locally without user/PID/net/mount namespaces; fail when CI is set."""
    if not namespaces_available():
        missing_service("user/PID/net/mount namespaces for the sandbox", "not available")


@contextlib.contextmanager
def sandbox_fleet(
    redis_env: dict[str, str], workdir: Path, extra_env: dict[str, str] | None = None
) -> Iterator[Fleet]:
    """One prefork CPU worker (one process) on queues of its own, stopped at the end."""
    suffix = uuid.uuid4().hex[:8]
    env = {
        **redis_env,
        "TASKFLEET_CPU_QUEUE": f"cpu-sbx-{suffix}",
        "TASKFLEET_IO_QUEUE": f"io-sbx-{suffix}",
        **(extra_env or {}),
    }
    fleet = Fleet(env, workdir)
    try:
        fleet.start(cpu_profile(load_settings(**fleet.settings_overrides), 1), "cpu")
        yield fleet
    finally:
        fleet.stop()


def job_runner(fleet: Fleet) -> Callable[[Any], dict[str, Any]]:
    """Send one ``sandbox.run`` job; return its result once no sandbox process is left."""
    client = Client(fleet.app())

    def run(payload: Any) -> dict[str, Any]:
        result: dict[str, Any] = client.enqueue("sandbox.run", payload).result(RESULT_TIMEOUT_S)
        wait_for(
            lambda: not sandbox_processes(get_sandbox_settings()),
            CLEANUP_TIMEOUT_S,
            "no sandbox process left on the host",
        )
        return result

    return run
