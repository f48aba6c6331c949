"""taskfleet: ``Client.enqueue_many`` / ``enqueue``, cpu_profile workers, Redis + Postgres results."""

from __future__ import annotations

import time
from typing import Any

import psycopg

from bench.common import (
    WORKER_PROCS,
    WORKER_READY_TIMEOUT_S,
    completion_timeout,
    make_payload,
    poll_until,
)
from bench.services import BENCH_STACK_DIR, count_rows, flush_redis, services, truncate_tables
from bench.systems.base import EnqueueVariant
from bench.systems.celery_meta import CeleryMetaSystem
from taskfleet.config.settings import DEFAULT_CPU_POOL, CpuPool
from taskfleet.workers.main import command_line
from taskfleet.workers.profiles import DISABLE_PERSISTER_ENV

JOB_KIND = "cpu.noop"
RESULTS_TABLE = "taskfleet_results"
WORKER_LOGLEVEL = "WARNING"


class TaskfleetSystem(CeleryMetaSystem):
    """taskfleet as shipped: the default CPU pool (solo: one worker per process, each
    fetching, running and acking its jobs inline; prefetch 1, acks late) plus one persister."""

    name = "taskfleet"
    label = "taskfleet"

    #: CPU worker instances the worker processes are shared between (the setting's default;
    #: a solo pool runs one worker per process whatever it says).
    cpu_workers = 1
    #: ``TASKFLEET_CPU_POOL`` (the setting's default).
    cpu_pool: CpuPool = DEFAULT_CPU_POOL

    def __init__(self) -> None:
        """Build a client bound to the bench's own Redis database."""
        super().__init__()
        from taskfleet.app import create_app
        from taskfleet.client import Client
        from taskfleet.config import load_settings

        svc = services()
        self.url = svc.redis_for(self.name)
        self.env = {
            "TASKFLEET_BROKER_URL": self.url,
            "TASKFLEET_REDIS_URL": self.url,
            "TASKFLEET_DATABASE_URL": svc.sqlalchemy_url,
            "TASKFLEET_DATA_DIR": BENCH_STACK_DIR,
            "TASKFLEET_CPU_POOL": self.cpu_pool,
        }
        self.settings = load_settings(
            broker_url=self.url,
            redis_url=self.url,
            database_url=svc.sqlalchemy_url,
            cpu_workers=self.cpu_workers,
            cpu_pool=self.cpu_pool,
            cpu_concurrency=max(self.cpu_workers, WORKER_PROCS),
        )
        self.client = Client(create_app(self.settings))
        self._durable_baseline = 0

    @property
    def result_url(self) -> str:
        """Results live in the system's Redis database."""
        return self.url

    def reset(self) -> None:
        """FLUSHDB and empty the durable results table."""
        flush_redis(self.url)
        truncate_tables(RESULTS_TABLE)

    def _spawn_workers(self, n_procs: int) -> None:
        """The host's CPU workers as ``taskfleet up`` plans them (solo: one per process);
        the first runs the persister, the others ``TASKFLEET_NO_PERSISTER=1``."""
        from taskfleet.workers.profiles import cpu_profiles

        for index, profile in enumerate(cpu_profiles(self.settings, n_procs)):
            argv = command_line(
                profile.argv(hostname=f"bench-{profile.name}@%h", loglevel=WORKER_LOGLEVEL),
                lean=self.settings.lean_worker_cli,
            )
            env = {**self.env, "TASKFLEET_CPU_CONCURRENCY": str(profile.concurrency)}
            if index:
                env[DISABLE_PERSISTER_ENV] = "1"
            self.workers.spawn(argv, env)

    def after_warmup(self) -> None:
        """Wait until the warm-up results are in Postgres too, then note the row count."""
        from bench.common import WARMUP_JOBS

        with psycopg.connect(services().libpq_url, autocommit=True) as conn:
            poll_until(
                lambda: count_rows(conn, RESULTS_TABLE) >= WARMUP_JOBS,
                WORKER_READY_TIMEOUT_S,
                "warm-up results in Postgres",
            )
            self._durable_baseline = count_rows(conn, RESULTS_TABLE)

    def publish(self, n: int) -> list[Any]:
        """One ``enqueue_many`` call (pipelines of 1000)."""
        handles = self.client.enqueue_many([(JOB_KIND, make_payload(i)) for i in range(n)])
        return [h.id for h in handles]

    def publish_one(self, index: int) -> Any:
        """One ``enqueue`` call."""
        return self.client.enqueue(JOB_KIND, make_payload(index)).id

    def enqueue_variants(self) -> list[EnqueueVariant]:
        """``enqueue_many`` and a loop of ``enqueue``."""
        return [
            EnqueueVariant("enqueue_many", "batch", self.publish),
            EnqueueVariant("enqueue loop", "loop", self._loop),
        ]

    def extra_after_drain(self, n: int, started: float) -> dict[str, float]:
        """Also time until every result is durable in Postgres (the persister's lag)."""
        target = self._durable_baseline + n
        with psycopg.connect(services().libpq_url, autocommit=True) as conn:
            poll_until(
                lambda: count_rows(conn, RESULTS_TABLE) >= target,
                completion_timeout(n),
                f"{n} taskfleet results in Postgres",
            )
        durable_s = time.perf_counter() - started
        return {"durable_jobs_per_s": n / durable_s}

    def stop(self) -> None:
        """Stop the workers (the persister stops with them)."""
        super().stop()


class TaskfleetPreforkSystem(TaskfleetSystem):
    """taskfleet with ``TASKFLEET_CPU_POOL=prefork``, the default before solo: one CPU worker
    whose parent dispatches every job to its pool processes (acks late, prefetch 1)."""

    name = "taskfleet_prefork"
    label = "taskfleet, prefork (the old default)"
    cpu_pool = "prefork"
    cpu_workers = 1

    def enqueue_variants(self) -> list[EnqueueVariant]:
        """None: publishing is the same as ``taskfleet``'s (W2 measures it there)."""
        return []


class TaskfleetPerCoreSystem(TaskfleetSystem):
    """taskfleet prefork with ``TASKFLEET_CPU_WORKERS=2``: one CPU worker (one parent) per
    process.

    The same jobs, client and worker processes; the two pool processes belong to two workers,
    so no single parent routes every job. Measured where the parent bounds latency (W1, W3).
    """

    name = "taskfleet_per_core"
    label = "taskfleet, prefork, 2 CPU workers x 1"
    cpu_pool = "prefork"
    cpu_workers = WORKER_PROCS

    def enqueue_variants(self) -> list[EnqueueVariant]:
        """None: publishing is the same as ``taskfleet``'s (W2 measures it there)."""
        return []


class TaskfleetMetricsSystem(TaskfleetSystem):
    """taskfleet as shipped, with the job metrics kept where a ``/metrics`` endpoint reads
    them: ``PROMETHEUS_MULTIPROC_DIR`` set for the workers, as ``taskfleet up`` sets it
    (memory-mapped files per process). W1 against ``taskfleet`` is what metrics cost."""

    name = "taskfleet_metrics"
    label = "taskfleet, metrics on (`PROMETHEUS_MULTIPROC_DIR`)"

    def __init__(self) -> None:
        """As ``taskfleet``, plus a metrics folder of its own."""
        import tempfile

        from taskfleet.observability.jobs import MULTIPROC_ENV

        super().__init__()
        self._metrics_dir = tempfile.TemporaryDirectory(prefix="bench-metrics-")
        self.env[MULTIPROC_ENV] = self._metrics_dir.name

    def enqueue_variants(self) -> list[EnqueueVariant]:
        """None: publishing is the same as ``taskfleet``'s (W2 measures it there)."""
        return []

    def stop(self) -> None:
        """Stop the workers, then remove the metrics folder."""
        super().stop()
        self._metrics_dir.cleanup()
