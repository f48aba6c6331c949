"""The children a fleet starts: two workers, then optionally beat and Flower."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path

from taskfleet.config import Settings
from taskfleet.fleet.children import Child, FleetOptions
from taskfleet.fleet.environment import FLOWER_AUTH_ENV
from taskfleet.fleet.flower import FLOWER_HOST, FlowerAuth
from taskfleet.fleet.processes import celery_argv
from taskfleet.workers.profiles import (
    APP_PATH,
    DISABLE_PERSISTER_ENV,
    WorkerProfile,
    cpu_profiles,
    io_profile,
)

LOG_DIR_NAME = "logs"
BEAT_SCHEDULE_NAME = "beat-schedule"


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
        The children: CPU worker, I/O worker, then beat and Flower if asked for.
    """
    host = socket.gethostname()
    tag = os.getpid()
    log_dir = data_dir / LOG_DIR_NAME
    level = settings.log_level
    plan: list[Child] = []
    cpu = cpu_profiles(settings, options.cpu_concurrency)
    profiles: Sequence[tuple[str, WorkerProfile]] = (
        *(
            (f"cpu-worker-{index + 1}" if len(cpu) > 1 else "cpu-worker", profile)
            for index, profile in enumerate(cpu)
        ),
        ("io-worker", io_profile(settings, options.io_concurrency)),
    )
    for index, (name, profile) in enumerate(profiles):
        nodename = f"{profile.name}-{tag}@{host}"
        argv = profile.argv(hostname=nodename, loglevel=level)
        plan.append(
            Child(
                name=name,
                role="worker",
                argv=celery_argv(argv),
                log_path=log_dir / f"{name}.log",
                url=broker,
                detail=(
                    f"{profile.pool} x{profile.concurrency}, queues {', '.join(profile.queues)}"
                ),
                nodename=nodename,
                # One result persister per CPU pool is plenty (they share a consumer group).
                extra_env={DISABLE_PERSISTER_ENV: "1"} if 0 < index < len(cpu) else {},
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
                argv=celery_argv(
                    [
                        "celery",
                        "-A",
                        APP_PATH,
                        "flower",
                        f"--port={port}",
                        f"--address={FLOWER_HOST}",
                    ]
                ),
                log_path=log_dir / "flower.log",
                url=f"http://{FLOWER_HOST}:{port}",
                detail=f"basic auth, user {auth.user}",
                extra_env={FLOWER_AUTH_ENV: auth.env_value},
            )
        )
    return plan
