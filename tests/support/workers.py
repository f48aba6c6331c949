"""Real Celery worker processes for integration tests."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import psutil
from celery import Celery

from taskfleet.app import create_app
from taskfleet.config import load_settings
from taskfleet.workers.main import command_line
from taskfleet.workers.profiles import (
    DISABLE_PERSISTER_ENV,
    WorkerProfile,
    cpu_profiles,
    io_profile,
)

from .waiting import wait_for


def is_cpu_node(name: str) -> bool:
    """Whether a Celery node name is a CPU worker's (``cpu-...``, or a solo ``cpu2-...``)."""
    return re.match(r"cpu\d*-", name) is not None


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every descendant at once (pool processes, persister, sidecar).

    All are stopped (SIGSTOP) first, so none sees another die and acts on it.
    """
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for proc in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(sig)


WORKER_START_TIMEOUT_S = 60.0
WORKER_STOP_TIMEOUT_S = 20.0
#: The session's fleets at the end of the run: nothing is asserted on their shutdown, and
#: one may be reconnecting to a broker a disruptive test restarted.
SESSION_FLEET_STOP_TIMEOUT_S = 2.0
PING_TIMEOUT_S = 0.5
#: Turns on the ``diag.*`` jobs (off by default: they fail or kill their worker on purpose),
#: for the fleets of the tests that send them.
DIAG_JOBS_ENV = {"TASKFLEET_DIAG_JOBS": "true"}
#: Flags test workers get on top of their profile's. Mingle (a start-up exchange of revoked
#: ids and clocks with the workers already running) waits a second for replies on every
#: start, and no test revokes a job or reads a logical clock.
TEST_WORKER_FLAGS = ("--without-mingle",)


@dataclass
class Fleet:
    """Worker processes sharing one environment (broker, queues, result store)."""

    env: dict[str, str]
    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def settings_overrides(self) -> dict[str, str]:
        """Settings fields set through ``env``."""
        return {
            k.removeprefix("TASKFLEET_").lower(): v
            for k, v in self.env.items()
            if k.startswith("TASKFLEET_")
        }

    def app(self) -> Celery:
        """An in-process app configured like the workers."""
        return create_app(load_settings(**self.settings_overrides))

    def start(self, profile: WorkerProfile, name: str) -> None:
        """Start one worker and wait until it answers a ping."""
        self.start_all([(profile, name)])

    def start_all(
        self, workers: Sequence[tuple[WorkerProfile, str]], nodes: dict[str, str] | None = None
    ) -> dict[str, str]:
        """Start several workers at once, then wait until every one answers a ping; their
        node names by worker name (``nodes``: names to use instead of fresh ones).

        Their start-ups (imports, pool processes, sidecars) overlap instead of queueing.
        """
        given = nodes or {}
        nodes = {name: self._spawn(profile, name, given.get(name)) for profile, name in workers}
        app = self.app()
        for name, node in nodes.items():
            wait_for(
                partial(self._answers, app, name, node),
                WORKER_START_TIMEOUT_S,
                f"worker {node} to answer ping (log: {self.log_dir / f'{name}.log'})",
            )
        return nodes

    def _spawn(self, profile: WorkerProfile, name: str, node: str | None = None) -> str:
        """Start one worker process (not waiting for it); its node name."""
        hostname = node or f"{name}-{uuid.uuid4().hex[:6]}@%h"
        # As ``taskfleet up`` starts it (``taskfleet.workers.main``, Celery's worker command).
        argv = [
            *command_line(profile.argv(hostname=hostname, loglevel="INFO")),
            *TEST_WORKER_FLAGS,
        ]
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        env = {**os.environ, **self.env}
        if profile.name != "cpu" and profile.name.startswith("cpu"):  # cpu2, cpu3: solo workers
            env[DISABLE_PERSISTER_ENV] = "1"  # one persister per fleet, as ``taskfleet up`` runs
        self.procs[name] = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        return hostname.replace("%h", os.uname().nodename)

    def _answers(self, app: Celery, name: str, node: str) -> bool:
        """Whether worker ``name`` (node ``node``) runs and answers a ping."""
        return self._alive(name) and bool(app.control.ping([node], timeout=PING_TIMEOUT_S))

    def _alive(self, name: str) -> bool:
        proc = self.procs[name]
        if proc.poll() is not None:
            log = (self.log_dir / f"{name}.log").read_text(errors="replace")[-3000:]
            raise AssertionError(f"worker {name} exited with {proc.returncode}:\n{log}")
        return True

    def stop(self, timeout_s: float = WORKER_STOP_TIMEOUT_S) -> None:
        """Warm-shut every worker down at once; kill the trees of those still running after
        ``timeout_s`` (one deadline for all)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in self.procs.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                kill_tree(proc.pid)
                proc.wait()
        self.procs.clear()


@contextmanager
def running_fleet(
    env: dict[str, str],
    log_dir: Path,
    *,
    cpu: int = 2,
    io: int = 10,
    pools: tuple[str, ...] = ("cpu", "io"),
    stop_timeout_s: float = WORKER_STOP_TIMEOUT_S,
) -> Iterator[Fleet]:
    """CPU and/or I/O workers for the duration of the block (``stop_timeout_s``: see
    :meth:`Fleet.stop`)."""
    fleet = Fleet(env, log_dir)
    settings = load_settings(**fleet.settings_overrides)
    # As ``taskfleet up`` plans them: one prefork worker, or one solo worker per process.
    cpu_workers = [(p, p.name) for p in cpu_profiles(settings, cpu)]
    profiles = {"cpu": cpu_workers, "io": [(io_profile(settings, io), "io")]}
    try:
        fleet.start_all([worker for pool in pools for worker in profiles[pool]])
        yield fleet
    finally:
        fleet.stop(stop_timeout_s)
