"""Worker pool profiles: how a CPU worker and an I/O worker are started.

* CPU: prefork processes, prefetch 1 per process (a long job never hoards a second one), plus
  one spare job per worker (``taskfleet.workers.prefetch``) so a freed process never waits.
  Or, with ``TASKFLEET_CPU_POOL=solo``, one solo worker per process, prefetch 1, no spare.
* I/O: gevent greenlets, which, unlike Celery's threads pool, grow and shrink at run time
  (``pool_grow``/``pool_shrink``). It also consumes Celery's default queue, where unrouted
  ``send_task`` messages land, and forwards each to its pool's queue.

A worker started with ``TASKFLEET_WORKER_GROUP`` set joins that group: it consumes the
group's queue of its pool (``cpu@eu``) first, then the pool's own queue (``cpu``), which
every group serves.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from taskfleet.config import Settings
from taskfleet.config.groups import get_group_settings, group_queue
from taskfleet.routing.topology import DEFAULT_INBOX, Pool, Topology

APP_PATH = "taskfleet.app"
#: Set to 1 where another process already runs ``python -m taskfleet.results.persister``.
DISABLE_PERSISTER_ENV = "TASKFLEET_NO_PERSISTER"
#: Set by ``taskfleet up`` for its workers: a folder where each marks, by its pid, that it
#: came up (``worker_ready``), which a crash right after still proves to the supervisor.
READY_DIR_ENV = "TASKFLEET_READY_DIR"
#: The pools taskfleet starts workers with (a subset of ``taskfleet.workers.pools.PoolKind``).
StartedPool = Literal["prefork", "solo", "gevent"]


@dataclass(frozen=True)
class WorkerProfile:
    """Everything needed to start one worker of a pool."""

    name: str
    pool: StartedPool
    queues: tuple[str, ...]
    concurrency: int
    prefetch_multiplier: int

    def argv(self, *, hostname: str | None = None, loglevel: str = "INFO") -> list[str]:
        """The ``celery worker`` command line for this profile."""
        return [
            "celery",
            "-A",
            APP_PATH,
            "worker",
            "-P",
            self.pool,
            "-Q",
            ",".join(self.queues),
            "-c",
            str(self.concurrency),
            "-n",
            hostname or f"{self.name}@%h",
            "--prefetch-multiplier",
            str(self.prefetch_multiplier),
            "-O",
            "fair",
            "-l",
            loglevel,
        ]


def pool_queues(topology: Topology, pool: Pool, group: str | None) -> tuple[str, ...]:
    """The queues a worker of ``pool`` consumes: its group's first, if it joins one."""
    queue = topology.queue_for_pool(pool)
    return (queue,) if group is None else (group_queue(queue, group), queue)


def cpu_profile(settings: Settings, concurrency: int | None = None) -> WorkerProfile:
    """Worker consuming the CPU queue: prefork, or solo (then of one process whatever asked)."""
    topology = Topology.from_settings(settings)
    solo = settings.cpu_pool == "solo"
    return WorkerProfile(
        name="cpu",
        pool="solo" if solo else "prefork",
        queues=pool_queues(topology, "cpu", get_group_settings().worker_group),
        concurrency=1 if solo else concurrency or settings.cpu_concurrency,
        prefetch_multiplier=1,
    )


def cpu_profiles(settings: Settings, concurrency: int | None = None) -> list[WorkerProfile]:
    """The CPU workers of one host: ``cpu_workers`` instances sharing the CPU processes.

    Every prefork worker routes all of its jobs through one parent process (fetch, dispatch
    to a pool process, result, ack). For short jobs at high rates that parent is the
    bottleneck (measured here at 1,000 no-op jobs/s: 0.5 ms of its CPU per job, p99 about
    halved with two workers of one process instead of one of two). Several instances each
    get an equal share of the processes (the first ones one more when they do not divide).

    A solo pool goes all the way: every process is a worker that fetches, runs and acks its
    own jobs, with no parent and no pipe between (measured here at 1,000 no-op jobs/s: p99
    2.5-8 ms, against 12-270 ms for prefork, and 0.75 ms of worker CPU per job against 1.1).

    Args:
        settings: The settings (``cpu_workers``, ``cpu_concurrency``).
        concurrency: Total CPU processes (default: the settings').
    """
    total = concurrency or settings.cpu_concurrency
    wanted = total if settings.cpu_pool == "solo" else settings.cpu_workers
    count = max(1, min(wanted, total))
    shares = [total // count + (1 if index < total % count else 0) for index in range(count)]
    profiles = []
    for index, share in enumerate(shares):
        profile = cpu_profile(settings, share)
        if index:
            profile = replace(profile, name=f"cpu{index + 1}")
        profiles.append(profile)
    return profiles


def io_profile(settings: Settings, concurrency: int | None = None) -> WorkerProfile:
    """Gevent worker consuming the I/O queue and the default inbox."""
    topology = Topology.from_settings(settings)
    return WorkerProfile(
        name="io",
        pool="gevent",
        queues=(*pool_queues(topology, "io", get_group_settings().worker_group), DEFAULT_INBOX),
        concurrency=concurrency or settings.io_concurrency,
        prefetch_multiplier=1,
    )


PROFILES = {"cpu": cpu_profile, "io": io_profile}
