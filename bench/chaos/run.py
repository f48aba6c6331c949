"""One scenario's world: its own Redis and Postgres, a fleet, a producer and a ledger.

A scenario function opens a :class:`ChaosRun`, starts workers, sends load, injects its
fault, waits for recovery and settling (each with a deadline), then calls :meth:`count`.
Everything it started is stopped on exit, whatever happened. Inside ``shared_postgres``
(``bench.chaos.servers``; scenarios run one after another, as the tests do) every run gets
a fresh database on one PostgreSQL instead of a cluster of its own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.chaos.fleet import ChaosFleet, Proc
from bench.chaos.ledger import Ledger
from bench.chaos.load import KIND_CPU, Producer
from bench.chaos.report import Row
from bench.chaos.servers import LOOPBACK, PostgresProcess, RedisProcess, shared_postgres_server
from bench.chaos.settle import Settler
from taskfleet.app import create_app
from taskfleet.client import Client
from taskfleet.config import load_settings
from taskfleet.devstack.polling import wait_until
from taskfleet.resilience.diag_keys import record_release_key
from taskfleet.workers.profiles import cpu_profile, io_profile

#: ``waiter(condition, timeout, what)``: the harness records a miss; tests raise on one.
Waiter = Callable[[Callable[[], Any], float, str], Any]
KEEP_ENV = "TASKFLEET_CHAOS_KEEP"
#: With ``Size.heartbeat_ttl``: heartbeats (and reclaim passes) per TTL.
HEARTBEATS_PER_TTL = 4
RELEASE_TTL_S = 600


def poll(condition: Callable[[], Any], timeout: float, what: str) -> bool:
    """The harness's waiter: True once ``condition`` holds, False at the deadline."""
    del what
    return wait_until(lambda: bool(condition()), timeout)


@dataclass(frozen=True)
class Size:
    """How big and how long a scenario runs.

    Attributes:
        jobs: Backlog enqueued before the fault.
        hold_ms: How long each job holds (so faults land mid-execution).
        rate: Jobs per second the producer keeps sending during the scenario.
        cpu_concurrency: Pool processes per prefork worker.
        io_concurrency: Greenlets per gevent worker.
        recover_s: Deadline for recovery, from the fault.
        settle_s: How long settling may go without a job finishing before what is left
            counts as lost (the whole settling is capped at ``settle_s + 2 * recover_s``).
        outage_s: How long Redis or RabbitMQ stays down.
        pg_outage_s: How long Postgres stays down.
        beat_s: How long the two beats run.
        heartbeat_ttl: The workers' heartbeat TTL (heartbeats and reclaim passes every
            quarter of it); None keeps the product's defaults (8 s, every 2 s and 1.5 s).
    """

    jobs: int
    hold_ms: int
    rate: float
    cpu_concurrency: int
    io_concurrency: int
    recover_s: float
    settle_s: float
    outage_s: float
    pg_outage_s: float
    beat_s: float
    heartbeat_ttl: float | None = None


#: The trickle stays below what the smallest surviving fleet serves (one solo worker: one
#: job per hold), so a fleet that recovered drains its queue instead of falling behind.
SIZES = {
    "full": Size(60, 300, 2.0, 2, 10, 30.0, 15.0, 3.0, 30.0, 30.0),
    "quick": Size(16, 200, 3.0, 2, 10, 15.0, 2.0, 2.0, 4.0, 3.0),
    # The tests' deadlines only tell fast recovery from the visibility timeout (an hour) on
    # any machine; the 15 s target is measured by the harness's own runs (RELIABILITY.md).
    # A 4 s TTL (heartbeat every 1 s from a process of its own) shortens each kill
    # scenario by about 5 s; the harness keeps the shipped defaults.
    "test": Size(16, 200, 3.0, 2, 10, 45.0, 5.0, 2.0, 4.0, 3.0, heartbeat_ttl=4.0),
}


class ChaosRun:
    """Services, fleet, producer and ledger of one scenario (a context manager).

    Args:
        name: The scenario (temp dir and queue names).
        size: Its size.
        waiter: How recovery deadlines are waited on.
        broker_url: A broker other than the scenario's own Redis (RabbitMQ), if any.
        kind: The job kind the producer sends.
        redis_host: The address the scenario's Redis binds (loopback unless partitioned).
    """

    def __init__(
        self,
        name: str,
        size: Size,
        waiter: Waiter = poll,
        *,
        broker_url: str | None = None,
        kind: str = KIND_CPU,
        redis_host: str = LOOPBACK,
    ) -> None:
        """Describe the run; :meth:`__enter__` starts the services."""
        self.name = name
        self.size = size
        self.waiter = waiter
        self.kind = kind
        self.tmp = Path(tempfile.mkdtemp(prefix=f"tfchaos-{name}-"))
        self.redis = RedisProcess(self.tmp / "redis", redis_host)
        self.broker_url = broker_url
        self.suffix = uuid.uuid4().hex[:8]
        self.log_name = f"{name}-{self.suffix}"
        shared = shared_postgres_server()
        self.postgres = shared or PostgresProcess(self.tmp / "pgdata")
        #: The run's own database on the shared server (None: its own server's ``taskfleet``).
        self.database = f"chaos_{name.replace('-', '_')}_{self.suffix}" if shared else None

    def __enter__(self) -> ChaosRun:
        """Start Redis and Postgres, bind the client, ledger and producer."""
        try:
            self.redis.start()
            self.env = {
                "TASKFLEET_BROKER_URL": self.broker_url or self.redis.url,
                "TASKFLEET_REDIS_URL": self.redis.url,
                "TASKFLEET_DATABASE_URL": self._start_database(),
                "TASKFLEET_EMBEDDED": "false",
                "TASKFLEET_DIAG_JOBS": "true",  # diag.record, the jobs the runs count
                "TASKFLEET_CPU_QUEUE": f"chaos-cpu-{self.suffix}",
                "TASKFLEET_IO_QUEUE": f"chaos-io-{self.suffix}",
                **_heartbeat_env(self.size.heartbeat_ttl),
            }
            overrides = {k.removeprefix("TASKFLEET_").lower(): v for k, v in self.env.items()}
            self.settings = load_settings(**overrides)
            self.app = create_app(self.settings)
            self.client = Client(self.app)
            (self.tmp / "logs").mkdir()
            self.fleet = ChaosFleet(self.env, self.tmp / "logs", self.app)
            self.ledger = Ledger(self.settings, self.log_name)
            self.producer = Producer(self.client, self.log_name, self.size.hold_ms, self.kind)
            self.settler = Settler(self.settings, self.ledger, self.producer)
        except BaseException:
            self._stop_services()
            raise
        return self

    def _start_database(self) -> str:
        """Start the run's own Postgres, or create its database on the shared one; its URL."""
        if self.database is None:
            self.postgres.start()
            return self.postgres.url
        if self.postgres.server.postmaster() is None:  # a failed run left it down
            self.postgres.start()
        return self.postgres.create_database(self.database)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop everything; keep the temp dir (logs) on an error or when asked to."""
        self.producer.stop()
        try:
            if self.redis.answers():
                self.ledger.redis.set(record_release_key(self.log_name), 1, ex=RELEASE_TTL_S)
        except Exception:
            pass
        self.fleet.stop(graceful=False)  # counted already: nothing left to finish
        self.client.close()
        self.app.close()
        self.ledger.close()
        self._stop_services()
        if exc_type is None and not os.environ.get(KEEP_ENV):
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _stop_services(self) -> None:
        self.redis.stop()
        if self.database is None:
            self.postgres.stop()
        else:
            with contextlib.suppress(Exception):  # a shared server that is down keeps it
                self.postgres.drop_database(self.database)

    # ------------------------------------------------------------------ fleet

    def cpu_worker(self, name: str, netns: str | None = None, **extra_env: str) -> Proc:
        """Start a CPU worker (prefork unless ``TASKFLEET_CPU_POOL="solo"`` is given: the
        scenarios that kill one pool process, or the parent, need one).

        Args:
            name: Role name.
            netns: A network namespace to run it in (``ip netns exec``).
            extra_env: Variables only this worker gets.
        """
        extra_env = {"TASKFLEET_CPU_POOL": "prefork", **extra_env}
        settings = self.settings.model_copy(update=_fields(extra_env))
        profile = cpu_profile(settings, self.size.cpu_concurrency)
        prefix = ("ip", "netns", "exec", netns) if netns else ()
        return self.fleet.start_worker(profile, name, extra_env, prefix)

    def io_worker(self, name: str) -> Proc:
        """Start a gevent I/O worker."""
        return self.fleet.start_worker(io_profile(self.settings, self.size.io_concurrency), name)

    def running_on(self, proc: Proc, *, exclude_main: bool = False) -> set[str]:
        """Wait until at least one job runs in ``proc``'s tree; return those running.

        Raises:
            RuntimeError: None started within the recovery deadline (the fleet is stuck).
        """
        found: set[str] = set()

        def some() -> bool:
            pids = proc.tree() - ({proc.pid} if exclude_main else set())
            found.update(self.ledger.executions().running_on(pids))
            return bool(found)

        if not wait_until(some, self.size.recover_s):
            raise RuntimeError(f"no job started on {proc.name} within {self.size.recover_s}s")
        return found

    # ------------------------------------------------------------------ measuring

    def await_jobs(self, ids: set[str], what: str, timeout: float | None = None) -> bool:
        """Wait (``waiter``) until every id in ``ids`` has a SUCCESS result."""
        wanted = sorted(ids)
        outcome = self.waiter(
            lambda: len(self.ledger.ok_in_redis(wanted)) == len(wanted),
            self.size.recover_s if timeout is None else timeout,
            what,
        )
        return outcome is not False

    def count(self, row: Row, *, expect_dead_letters: bool = False) -> Row:
        """Settle (bounded), then fill ``row``'s counts and problems."""
        self.producer.stop()
        self.settler.wait(self.size.settle_s, self.size.settle_s + 2 * self.size.recover_s)
        return self.settler.fill(row, expect_dead_letters=expect_dead_letters)


def _fields(env: dict[str, str]) -> dict[str, str]:
    return {k.removeprefix("TASKFLEET_").lower(): v for k, v in env.items()}


def since(start: float, end: float | None) -> float | None:
    """``end - start`` in seconds, or None when ``end`` is None."""
    return None if end is None else max(0.0, end - start)


def now() -> float:
    """Wall-clock time (the workers log ``time.time()`` too)."""
    return time.time()


def _heartbeat_env(ttl: float | None) -> dict[str, str]:
    """The workers' heartbeat settings for a TTL (none: the product's defaults)."""
    if ttl is None:
        return {}
    beat = str(ttl / HEARTBEATS_PER_TTL)
    return {
        "TASKFLEET_RESILIENCE_HEARTBEAT_TTL": str(ttl),
        "TASKFLEET_RESILIENCE_HEARTBEAT_INTERVAL": beat,
        "TASKFLEET_RESILIENCE_RECLAIM_INTERVAL": beat,
    }
