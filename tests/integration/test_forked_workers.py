"""``taskfleet up``'s solo CPU workers, forked from its fork server, on real Redis.

A forked worker must be what a launched one is: its own session, the fleet's environment
(not the supervisor's), its log, and after a crash a restart that serves again.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from taskfleet.client import Client
from taskfleet.config import load_settings
from taskfleet.fleet import Fleet
from taskfleet.fleet.children import FleetOptions
from taskfleet.fleet.environment import FLOWER_AUTH_ENV
from taskfleet.fleet.forkserver import ForkedWorker
from taskfleet.fleet.plan import METRICS_DIR_NAME
from tests.support.fleets import started_fleet
from tests.support.waiting import wait_for

READY_TIMEOUT_S = 60.0
RESULT_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 15.0


@pytest.fixture
def fleet(
    services: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Fleet]:
    """A fleet of one solo CPU worker and an I/O worker on private queues (no beat, no
    Flower, no autoscaling), the queues named in its settings only."""
    suffix = uuid.uuid4().hex[:6]
    monkeypatch.setenv(FLOWER_AUTH_ENV, "admin:hunter2")  # the supervisor's; Flower's only
    monkeypatch.setenv("TASKFLEET_AUTOSCALE_ENABLED", "false")
    settings = load_settings(
        **{k.removeprefix("TASKFLEET_").lower(): v for k, v in services.items()},
        cpu_pool="solo",
        cpu_queue=f"cpu-fork-{suffix}",
        io_queue=f"io-fork-{suffix}",
        data_dir=str(tmp_path / "data"),
        _env_file=None,
    )
    options = FleetOptions(
        cpu_concurrency=1, io_concurrency=2, flower=False, beat=False, metrics=False
    )
    with started_fleet(settings, options, READY_TIMEOUT_S) as running:
        yield running


def test_a_forked_worker_serves_in_its_own_session_with_the_fleets_environment(
    fleet: Fleet,
) -> None:
    (cpu,) = [c for c in fleet.children if c.name == "cpu-worker"]
    assert isinstance(cpu.popen, ForkedWorker)
    assert cpu.pid is not None
    assert os.getpgid(cpu.pid) == cpu.pid  # the supervisor signals its group
    server = psutil.Process(cpu.pid).parent()
    assert server is not None
    assert server.pid != os.getpid()  # forked by the fork server, not by the supervisor
    # The queue the worker consumes is in the fleet's settings, not in this process's
    # environment: the job runs only if the worker took the fleet's environment.
    assert os.environ.get("TASKFLEET_CPU_QUEUE") != fleet.settings.cpu_queue
    client = Client(fleet.control_app)
    assert client.enqueue("cpu.noop", {}).result(RESULT_TIMEOUT_S) == {"ok": True}
    # Its job metrics go to the fleet's metric files, as a launched worker's: prometheus-client
    # picks its mode at import, and the fork server imported it (Flower's command-line plugin).
    metric_files = {p.name for p in (fleet.data_dir / METRICS_DIR_NAME).glob("*.db")}
    assert any(name.endswith(f"_{cpu.pid}.db") for name in metric_files), metric_files
    # What the supervisor holds that no worker gets stays out of the fork server.
    assert FLOWER_AUTH_ENV not in server.environ()
    assert FLOWER_AUTH_ENV in os.environ
    assert "ready" in cpu.log_path.read_text()


def test_a_killed_forked_worker_is_restarted_forked_and_serves(fleet: Fleet) -> None:
    (cpu,) = [c for c in fleet.children if c.name == "cpu-worker"]
    first = cpu.popen
    assert isinstance(first, ForkedWorker)
    assert cpu.pid is not None
    os.killpg(cpu.pid, signal.SIGKILL)
    assert first.wait(EXIT_TIMEOUT_S) == -signal.SIGKILL
    first.send_signal(signal.SIGTERM)  # an exited worker is not signalled (no error)
    fleet.relaunch(cpu)
    assert isinstance(cpu.popen, ForkedWorker)
    assert cpu.popen is not first
    wait_for(lambda: fleet.wait_ready(READY_TIMEOUT_S) >= 0, READY_TIMEOUT_S, "the restart")
    client = Client(fleet.control_app)
    assert client.enqueue("cpu.noop", {}).result(RESULT_TIMEOUT_S) == {"ok": True}
    assert "restarted by taskfleet up (forked)" in cpu.log_path.read_text()
