"""The children a fleet starts: two workers, then optionally beat and Flower."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

from taskfleet.config import Settings
from taskfleet.config.observability import get_observability_settings
from taskfleet.devstack.processes import port_free
from taskfleet.fleet.children import Child, FleetError, FleetOptions
from taskfleet.fleet.environment import FLOWER_AUTH_ENV
from taskfleet.fleet.flower import FLOWER_HOST, FlowerAuth
from taskfleet.fleet.processes import celery_argv
from taskfleet.workers.main import command_line as worker_command_line
from taskfleet.workers.profiles import (
    APP_PATH,
    DISABLE_PERSISTER_ENV,
    READY_DIR_ENV,
    WorkerProfile,
    cpu_profiles,
    io_profile,
)

LOG_DIR_NAME = "logs"
#: The module Flower runs through (``celery`` with the Broker page fixed).
FLOWER_SHIM = "taskfleet.observability.flower_broker"
BEAT_SCHEDULE_NAME = "beat-schedule"
#: Under the data folder: the workers' metric files (``PROMETHEUS_MULTIPROC_DIR``), emptied
#: by ``up`` before the workers start.
METRICS_DIR_NAME = "metrics"
#: Under the data folder: each worker's mark that it came up (``workers/signals.py``).
READY_DIR_NAME = "ready"
#: The variable prometheus-client reads its multiprocess folder from (workers only: Flower's
#: own metrics stay in Flower).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def plan_children(
    settings: Settings,
    options: FleetOptions,
    *,
    broker: str,
    data_dir: Path,
    auth: FlowerAuth | None,
) -> list[Child]:
    """Describe every child to start, in start order (nothing is started).

    Args:
        settings: The fleet's settings.
        options: What to run.
        broker: The broker URL, sanitized, for display.
        data_dir: The data folder (logs and beat's schedule go there).
        auth: Flower's credentials (required when ``options.flower``).

    Returns:
        The children: CPU worker, I/O worker, then beat, Flower and the metrics endpoint if
        asked for.
    """
    tag = os.getpid()
    log_dir = data_dir / LOG_DIR_NAME
    level = settings.log_level
    cpu = cpu_profiles(settings, options.cpu_concurrency)
    plan = [
        worker_child(
            f"cpu-worker-{index + 1}" if len(cpu) > 1 else "cpu-worker",
            profile,
            settings,
            broker=broker,
            data_dir=data_dir,
            tag=tag,
            persister=index == 0,
        )
        for index, profile in enumerate(cpu)
    ]
    plan.append(
        worker_child(
            "io-worker",
            io_profile(settings, options.io_concurrency),
            settings,
            broker=broker,
            data_dir=data_dir,
            tag=tag,
            persister=True,
        )
    )
    if options.beat:
        schedule = data_dir / BEAT_SCHEDULE_NAME
        plan.append(
            Child(
                name="beat",
                role="beat",
                argv=celery_argv(
                    ["celery", "-A", APP_PATH, "beat", "-s", str(schedule), "-l", level]
                ),
                log_path=log_dir / "beat.log",
                url=broker,
                detail=f"schedule {schedule}",
            )
        )
    if options.flower:
        assert auth is not None
        port = options.flower_port
        plan.append(
            Child(
                name="flower",
                role="flower",
                # The credentials go in Flower's environment, not its argv: a command
                # line is readable by every user of the machine (ps, /proc).
                # Through taskfleet's shim, so Flower's Broker page reads taskfleet's Redis
                # transport (taskfleet/observability/flower_broker.py says why).
                argv=[
                    sys.executable,
                    "-m",
                    FLOWER_SHIM,
                    "-A",
                    APP_PATH,
                    "flower",
                    f"--port={port}",
                    f"--address={FLOWER_HOST}",
                ],
                log_path=log_dir / "flower.log",
                url=f"http://{FLOWER_HOST}:{port}",
                detail=f"basic auth, user {auth.user}",
                extra_env={FLOWER_AUTH_ENV: auth.env_value},
            )
        )
    if options.metrics:
        plan.append(metrics_child(data_dir, log_dir))
    return plan


def worker_child(
    name: str,
    profile: WorkerProfile,
    settings: Settings,
    *,
    broker: str,
    data_dir: Path,
    tag: int,
    persister: bool,
) -> Child:
    """One worker child: node ``<profile>-<tag>@<host>``, its log under the data folder.

    ``persister``: whether it may run the result persister. One per CPU pool is plenty (the
    persisters of a fleet share a consumer group); the I/O worker runs none of its own.
    """
    nodename = f"{profile.name}-{tag}@{socket.gethostname()}"
    return Child(
        name=name,
        role="worker",
        argv=worker_command_line(
            profile.argv(hostname=nodename, loglevel=settings.log_level),
            lean=settings.lean_worker_cli,
        ),
        log_path=data_dir / LOG_DIR_NAME / f"{name}.log",
        url=broker,
        detail=f"{profile.pool} x{profile.concurrency}, queues {', '.join(profile.queues)}",
        nodename=nodename,
        pool=profile.pool,
        extra_env={
            MULTIPROC_ENV: str(data_dir / METRICS_DIR_NAME),
            READY_DIR_ENV: str(data_dir / READY_DIR_NAME),
        }
        | ({} if persister else {DISABLE_PERSISTER_ENV: "1"}),
    )


def metrics_child(data_dir: Path, log_dir: Path) -> Child:
    """The host's metrics endpoint, reading the workers' metric files."""
    obs = get_observability_settings()
    return Child(
        name="metrics",
        role="metrics",
        argv=[sys.executable, "-m", "taskfleet.cli", "metrics", "serve"],
        log_path=log_dir / "metrics.log",
        url=f"http://{obs.metrics_host}:{obs.metrics_port}/metrics",
        detail="/metrics, /healthz, /readyz"
        + (", basic auth" if obs.metrics_basic_auth is not None else ""),
        extra_env={MULTIPROC_ENV: str(data_dir / METRICS_DIR_NAME)},
    )


def prepare_metrics(data_dir: Path) -> None:
    """Before the workers start: the endpoint's port is free, their metrics folder empty.

    A previous run's files would add its counts to this run's (prometheus-client sums
    every file in the folder).

    Raises:
        FleetError: The endpoint's port is taken.
    """
    obs = get_observability_settings()
    if not port_free(obs.metrics_host, obs.metrics_port):
        raise FleetError(
            f"port {obs.metrics_port} on {obs.metrics_host} is in use; "
            "set TASKFLEET_METRICS_PORT or use --no-metrics"
        )
    folder = data_dir / METRICS_DIR_NAME
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
