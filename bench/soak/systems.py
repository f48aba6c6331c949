"""The two fleets W8 soaks: ``taskfleet up`` as shipped, and a stock ``celery worker``.

Both run on the soak's private Redis (so its memory is theirs alone) and log at WARNING (so a
million ``succeeded`` lines do not fill the disk); everything else is as a user gets it.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import psycopg
import redis

from bench.common import make_payload, poll_until
from bench.procs import WorkerGroup
from bench.services import count_rows, services, truncate_tables
from bench.systems import celery_app as capp
from bench.systems.celery_redis import celery_worker_argv

#: kombu's Redis priority sub-queues are named ``<queue>\x06\x16<step>``.
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = range(10)
UNACKED_KEY = "unacked"
RESULT_PREFIX = "celery-task-meta-"
READY_TIMEOUT_S = 120.0
READ_TIMEOUT_S = 10.0
WARMUP_JOBS = 20
#: Every ``IO_EVERY``-th taskfleet job is ``io.noop``, so the I/O worker is soaked too.
IO_EVERY = 10
SOAK_LOGLEVEL = "WARNING"
RESULTS_TABLE = "taskfleet_results"


class SoakSystem(ABC):
    """A fleet under soak: started on a Redis URL, fed batches, sampled, stopped."""

    name: str = ""
    label: str = ""
    queues: tuple[str, ...] = ()
    #: Whether an autoscaler resizes its pool (the late-fork probe needs one).
    autoscaled: bool = False

    def __init__(self, redis_url: str, workdir: Path) -> None:
        """Describe the fleet; :meth:`start` runs it."""
        self.redis_url = redis_url
        self.workdir = workdir
        self.redis = redis.Redis.from_url(redis_url)
        self.group = WorkerGroup(f"soak-{self.name}")

    @abstractmethod
    def start(self) -> None:
        """Start the fleet and wait until a warm-up batch has results."""

    @abstractmethod
    def publish(self, start: int, n: int) -> list[str]:
        """Publish jobs ``start`` .. ``start + n - 1``; return their ids."""

    def root_pid(self) -> int:
        """The pid at the top of the fleet's process tree."""
        return self.group.procs[0].pid

    def standby_pids(self) -> set[int]:
        """Workers booted ahead of need that serve nothing yet (``taskfleet up``'s standby)."""
        return set()

    def backlog(self) -> int:
        """Messages waiting in the fleet's queues (every priority)."""
        names = [q + PRIORITY_SEPARATOR + str(s) for q in self.queues for s in PRIORITY_STEPS]
        pipe = self.redis.pipeline(transaction=False)
        for name in [*self.queues, *names]:
            pipe.llen(name)
        return sum(int(n) for n in pipe.execute())

    def in_flight(self) -> int:
        """Delivered but not yet acknowledged messages."""
        return int(self.redis.hlen(UNACKED_KEY))

    def result_keys(self) -> int:
        """Results held in Redis."""
        return sum(1 for _ in self.redis.scan_iter(match=RESULT_PREFIX + "*", count=10_000))

    def durable_results(self) -> int | None:
        """Results in the durable store, or ``None`` when there is none."""
        return None

    def readable(self, ids: list[str]) -> int:
        """How many of ``ids`` a client can read back."""
        return sum(1 for job_id in ids if self._read(job_id) is not None)

    @abstractmethod
    def _read(self, job_id: str) -> Any:
        """One result through the system's own client API, or ``None``."""

    def _wait_warmup(self) -> None:
        ids = self.publish(0, WARMUP_JOBS)
        keys = [RESULT_PREFIX + i for i in ids]

        def done() -> bool:
            self.group.check_alive()  # raises, naming the log, if the fleet died
            return int(self.redis.exists(*keys)) == len(keys)

        poll_until(done, READY_TIMEOUT_S, f"{self.name} warm-up results")

    def stop(self) -> None:
        """Stop the fleet (always safe)."""
        self.group.stop()
        self.redis.close()


class TaskfleetSoak(SoakSystem):
    """``taskfleet up --no-flower``: CPU and I/O workers, beat with the autoscaler, persisters."""

    name = "taskfleet"
    label = "taskfleet up (as shipped)"
    queues = ("cpu", "io")
    autoscaled = True

    def start(self) -> None:
        """Empty the results table, start ``taskfleet up``, wait for the warm-up."""
        from taskfleet.app import create_app
        from taskfleet.client import Client
        from taskfleet.config import load_settings

        svc = services()
        truncate_tables(RESULTS_TABLE)
        env = {
            "TASKFLEET_BROKER_URL": self.redis_url,
            "TASKFLEET_REDIS_URL": self.redis_url,
            "TASKFLEET_DATABASE_URL": svc.sqlalchemy_url,
            "TASKFLEET_EMBEDDED": "false",
            "TASKFLEET_DATA_DIR": str(self.workdir / "taskfleet"),
            "TASKFLEET_LOG_LEVEL": SOAK_LOGLEVEL,
        }
        self.settings = load_settings(
            broker_url=self.redis_url, redis_url=self.redis_url, database_url=svc.sqlalchemy_url
        )
        self.client = Client(create_app(self.settings))
        self.group.spawn(["taskfleet", "up", "--no-flower"], env)
        self._wait_warmup()

    def publish(self, start: int, n: int) -> list[str]:
        """One ``enqueue_many``; every ``IO_EVERY``-th job goes to the I/O pool."""
        jobs = [
            ("io.noop" if i % IO_EVERY == 0 else "cpu.noop", make_payload(i))
            for i in range(start, start + n)
        ]
        return [h.id for h in self.client.enqueue_many(jobs)]

    def standby_pids(self) -> set[int]:
        """The standby solo worker, as ``taskfleet up``'s status file names it."""
        from taskfleet.fleet.status import read_status

        doc = read_status(self.workdir / "taskfleet") or {}
        children = doc.get("children", {})
        return {int(c["pid"]) for c in children.values() if c.get("state") == "standby"}

    def durable_results(self) -> int:
        """Rows in the durable results table."""
        with psycopg.connect(services().libpq_url, autocommit=True) as conn:
            return count_rows(conn, RESULTS_TABLE)

    def _read(self, job_id: str) -> Any:
        return self.client.handle(job_id).result(timeout=READ_TIMEOUT_S)

    def stop(self) -> None:
        """Stop the fleet and close the client."""
        super().stop()
        if hasattr(self, "client"):
            self.client.close()


class CelerySoak(SoakSystem):
    """Stock Celery: ``celery worker -P prefork -c 2``, Redis broker and Redis results."""

    name = "celery_redis"
    label = "stock Celery, prefork x2, Redis results"
    queues = (capp.QUEUE,)
    procs = 2

    def start(self) -> None:
        """Start the worker and wait for the warm-up."""
        self.app, self.task = capp.make_app(
            self.redis_url, self.redis_url, ignore=False, counter_url=None
        )
        env = {capp.BROKER_ENV: self.redis_url, capp.BACKEND_ENV: self.redis_url}
        self.group.spawn(celery_worker_argv(self.procs, "soak-celery@%h"), env)  # at WARNING
        self._wait_warmup()

    def publish(self, start: int, n: int) -> list[str]:
        """A loop of ``apply_async`` (stock Celery has no batch publish)."""
        return [self.task.apply_async((make_payload(i),)).id for i in range(start, start + n)]

    def _read(self, job_id: str) -> Any:
        return self.app.AsyncResult(job_id).get(timeout=READ_TIMEOUT_S)


def reservoir(sample: list[str], ids: list[str], seen: int, size: int, rng: random.Random) -> None:
    """Keep a uniform random ``sample`` of at most ``size`` ids over every id published.

    Args:
        sample: The sample so far (changed in place).
        ids: Ids just published.
        seen: How many ids were published before these.
        size: The sample's size.
        rng: The random source.
    """
    for offset, job_id in enumerate(ids):
        index = seen + offset
        if len(sample) < size:
            sample.append(job_id)
        elif (slot := rng.randrange(index + 1)) < size:
            sample[slot] = job_id
