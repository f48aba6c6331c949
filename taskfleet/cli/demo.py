"""The demo workload: push a mixed, prioritised batch through a :class:`Fleet` and measure it.

Nothing here prints: the CLI presents the results.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from kombu import Connection
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import ProgrammingError

from taskfleet.cache.store import FINAL_STATES, make_engine, results_table
from taskfleet.client import Client, JobSpec
from taskfleet.config import Settings
from taskfleet.fleet import POLL_INTERVAL_S, Deadline, Fleet
from taskfleet.resilience.dlq import DeadLetterFilter, DeadLetterQueues
from taskfleet.routing.depth import queue_depths
from taskfleet.routing.priority import PRIORITY_LEVELS
from taskfleet.routing.topology import Topology

# --------------------------------------------------------------------------- demo constants

DEFAULT_DEMO_JOBS = 2000
DEFAULT_DEMO_TIMEOUT_S = 300.0
DEFAULT_PUBLISH_CHUNK = 250
"""Jobs per :meth:`Client.enqueue_many` call (one pipeline each)."""

DEFAULT_PERSIST_TIMEOUT_S = 60.0
"""Seconds to wait for the persister to copy this run's results into Postgres."""

RESULT_KEY_PREFIX = "celery-task-meta-"
RESULT_POLL_INTERVAL_S = 0.25
"""Pause between two MGET rounds (measurements use ``date_done``, not when we looked)."""

MGET_CHUNK = 1000
DLQ_CHECK_INTERVAL_S = 1.0
PG_COUNT_CHUNK = 1000

CHECKSUM_SHARE = 0.55
WAIT_SHARE = 0.40
INVALID_SHARE = 0.015
"""Share of ``cpu.checksum`` jobs with ``rounds: 0``, which fail by design."""

CHECKSUM_ROUNDS = (1, 50)
WAIT_MS = (1, 20)
PRIORITY_WEIGHTS: dict[str, float] = {"low": 0.25, "normal": 0.40, "high": 0.25, "critical": 0.10}

# --------------------------------------------------------------------------- small helpers


@dataclass(frozen=True)
class PlannedJob:
    """One job of the demo workload.

    Attributes:
        spec: What is sent.
        priority: Its level name.
        expect_failure: True for the jobs that are invalid by design.
    """

    spec: JobSpec
    priority: str
    expect_failure: bool = False


def plan_workload(jobs: int, rng: random.Random) -> list[PlannedJob]:
    """A shuffled mix: ~55% checksums, ~40% waits, ~1.5% invalid, the rest no-ops.

    Args:
        jobs: How many jobs.
        rng: Source of randomness (seed it for a repeatable run).

    Returns:
        ``jobs`` planned jobs with priorities spread over low/normal/high/critical.
    """
    invalid = round(jobs * INVALID_SHARE)
    checksums = min(round(jobs * CHECKSUM_SHARE), jobs - invalid)
    waits = min(round(jobs * WAIT_SHARE), jobs - invalid - checksums)
    noops = jobs - invalid - checksums - waits
    levels = list(PRIORITY_WEIGHTS)
    weights = list(PRIORITY_WEIGHTS.values())

    def level() -> str:
        return rng.choices(levels, weights)[0]

    plan: list[PlannedJob] = []
    for _ in range(checksums):
        rounds = rng.randint(*CHECKSUM_ROUNDS)
        prio = level()
        plan.append(PlannedJob(JobSpec("cpu.checksum", {"rounds": rounds}, prio), prio))
    for _ in range(waits):
        ms = rng.randint(*WAIT_MS)
        prio = level()
        plan.append(PlannedJob(JobSpec("io.wait", {"ms": ms}, prio), prio))
    for i in range(noops):
        prio = level()
        kind = "cpu.noop" if i % 2 == 0 else "io.noop"
        plan.append(PlannedJob(JobSpec(kind, None, prio), prio))
    for _ in range(invalid):
        prio = level()
        plan.append(PlannedJob(JobSpec("cpu.checksum", {"rounds": 0}, prio), prio, True))
    rng.shuffle(plan)
    return plan


class ResultWatcher:
    """Finds finished jobs by MGET of their ``celery-task-meta-<id>`` keys, in chunks.

    Args:
        client: The result store's Redis.
        chunk: Keys per MGET.
    """

    def __init__(self, client: redis.Redis, chunk: int = MGET_CHUNK) -> None:
        self.client = client
        self.chunk = chunk
        self.pending: dict[str, None] = {}

    def add(self, job_ids: Sequence[str]) -> None:
        """Watch these jobs too."""
        self.pending.update(dict.fromkeys(job_ids))

    def poll(self) -> dict[str, dict[str, Any]]:
        """Metas of the jobs that finished since the last poll (one round trip)."""
        ids = list(self.pending)
        if not ids:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for start in range(0, len(ids), self.chunk):
            pipe.mget([RESULT_KEY_PREFIX + i for i in ids[start : start + self.chunk]])
        values = [v for batch in pipe.execute() for v in batch]
        finished: dict[str, dict[str, Any]] = {}
        for job_id, raw in zip(ids, values, strict=True):
            if raw is None:
                continue
            try:
                meta = json.loads(raw)
            except ValueError:
                continue
            if isinstance(meta, dict) and meta.get("status") in FINAL_STATES:
                finished[job_id] = meta
                del self.pending[job_id]
        return finished


def _parse_utc(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of ``values`` (``nan`` when empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def dead_letter_total(broker_url: str, topology: Topology) -> int:
    """Messages waiting in both dead-letter queues."""
    queues = [topology.dlq_for(topology.cpu_queue), topology.dlq_for(topology.io_queue)]
    with Connection(broker_url) as conn:
        return sum(queue_depths(conn, queues).values())


def dead_letter_ids(settings: Settings, job_ids: Iterable[str]) -> set[str]:
    """Which of ``job_ids`` have a dead letter."""
    wanted = frozenset(job_ids)
    if not wanted:
        return set()
    letters = DeadLetterQueues(settings).list(DeadLetterFilter(ids=wanted))
    return {letter.id for letter in letters}


def count_persisted(engine: Engine, keys: Sequence[str]) -> int:
    """Rows of ``taskfleet_results`` in a final state among ``keys`` (0 if no table yet)."""
    total = 0
    try:
        with engine.connect() as conn:
            for start in range(0, len(keys), PG_COUNT_CHUNK):
                chunk = keys[start : start + PG_COUNT_CHUNK]
                query = (
                    select(func.count())
                    .select_from(results_table)
                    .where(results_table.c.key.in_(chunk))
                    .where(results_table.c.status.in_(FINAL_STATES))
                )
                total += int(conn.execute(query).scalar_one())
    except ProgrammingError:
        return 0  # the persister has not created the table yet
    return total


@dataclass
class DemoReport:
    """What a demo run measured.

    Attributes:
        sent: Jobs published.
        done: Jobs that ended in SUCCESS.
        failed: Jobs that ended in FAILURE (or REVOKED).
        expected_failures: Jobs that were invalid by design.
        unexpected_failures: Failed jobs that were valid.
        dead_lettered: New messages in the dead-letter queues during the run (a failed job is
            both failed and dead-lettered).
        dead_letter_only: Jobs with a dead letter and no result (e.g. a poison pill).
        unfinished: Jobs with no result when the deadline passed.
        wall_s: Seconds from the first publish to the last result.
        latencies_ms: Publish-to-result milliseconds of every finished job.
        latency_by_priority: The same, per priority level.
        pg_rows: This run's results found in Postgres.
        publish_s: Seconds spent publishing.
    """

    sent: int = 0
    done: int = 0
    failed: int = 0
    expected_failures: int = 0
    unexpected_failures: int = 0
    dead_lettered: int = 0
    dead_letter_only: int = 0
    unfinished: int = 0
    wall_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    latency_by_priority: dict[str, list[float]] = field(default_factory=dict, repr=False)
    pg_rows: int = 0
    publish_s: float = 0.0

    @property
    def lost(self) -> int:
        """Jobs with neither a result nor a dead letter."""
        return self.sent - self.done - self.failed - self.dead_letter_only

    @property
    def pg_expected(self) -> int:
        """Rows Postgres must hold: one per finished job."""
        return self.done + self.failed

    @property
    def throughput(self) -> float:
        """Finished jobs per second over :attr:`wall_s`."""
        finished = self.done + self.failed
        return finished / self.wall_s if self.wall_s > 0 else math.nan

    @property
    def p50_ms(self) -> float:
        """Median publish-to-result latency."""
        return percentile(self.latencies_ms, 50)

    @property
    def p99_ms(self) -> float:
        """99th percentile publish-to-result latency."""
        return percentile(self.latencies_ms, 99)

    @property
    def ok(self) -> bool:
        """Nothing lost, only the invalid jobs failed, and every result reached Postgres."""
        return (
            self.lost == 0
            and self.unexpected_failures == 0
            and self.failed == self.expected_failures
            and self.pg_rows >= self.pg_expected
        )


ProgressCallback = Callable[[DemoReport, str], None]


def run_demo(
    fleet: Fleet,
    jobs: int = DEFAULT_DEMO_JOBS,
    timeout: float = DEFAULT_DEMO_TIMEOUT_S,
    *,
    seed: int | None = None,
    chunk: int = DEFAULT_PUBLISH_CHUNK,
    persist_timeout: float = DEFAULT_PERSIST_TIMEOUT_S,
    on_progress: ProgressCallback | None = None,
) -> DemoReport:
    """Push a mixed workload through a ready fleet and measure it.

    Args:
        fleet: A started fleet whose workers answered a ping.
        jobs: How many jobs to send.
        timeout: Seconds, from the first publish, to wait for all results.
        seed: Seed of the workload's randomness.
        chunk: Jobs per ``enqueue_many`` call.
        persist_timeout: Seconds to wait for the results to reach Postgres.
        on_progress: Called with the report so far and a phase name
            (``publishing``, ``running``, ``persisting``).

    Returns:
        The measurements; :attr:`DemoReport.ok` says whether the run was healthy.

    Raises:
        ChildDied: A fleet process exited during the run.
    """
    report = DemoReport()
    notify = on_progress or (lambda _r, _p: None)
    urls = fleet.resolve()
    topology = Topology.from_settings(fleet.settings)
    plan = plan_workload(jobs, random.Random(seed))
    report.expected_failures = sum(p.expect_failure for p in plan)
    client = Client(fleet.control_app)
    results = redis.Redis.from_url(urls.redis_url)
    engine = make_engine(urls.database_url, pool_size=1)
    try:
        dlq_before = dead_letter_total(urls.broker_url, topology)
        watcher = ResultWatcher(results)
        sent_at: dict[str, datetime] = {}
        priority_of: dict[str, str] = {}
        invalid: set[str] = set()
        first_publish = datetime.now(UTC)
        started = time.monotonic()
        deadline = Deadline(timeout)
        for start in range(0, len(plan), chunk):
            batch = plan[start : start + chunk]
            at = datetime.now(UTC)  # before the publish: latency never under-counts
            handles = client.enqueue_many([p.spec for p in batch])
            for planned, handle in zip(batch, handles, strict=True):
                sent_at[handle.id] = at
                priority_of[handle.id] = planned.priority
                if planned.expect_failure:
                    invalid.add(handle.id)
            watcher.add([h.id for h in handles])
            report.sent += len(handles)
            notify(report, "publishing")
        report.publish_s = time.monotonic() - started

        last_done = first_publish
        by_priority: dict[str, list[float]] = {name: [] for name in PRIORITY_LEVELS}
        next_dlq_check = time.monotonic()
        while watcher.pending:
            fleet.check()
            for job_id, meta in watcher.poll().items():
                if meta.get("status") == "SUCCESS":
                    report.done += 1
                else:
                    report.failed += 1
                    if job_id not in invalid:
                        report.unexpected_failures += 1
                done_at = _parse_utc(meta.get("date_done")) or datetime.now(UTC)
                last_done = max(last_done, done_at)
                latency = (done_at - sent_at[job_id]).total_seconds() * 1000
                report.latencies_ms.append(latency)
                by_priority.setdefault(priority_of[job_id], []).append(latency)
            if time.monotonic() >= next_dlq_check:
                report.dead_lettered = dead_letter_total(urls.broker_url, topology) - dlq_before
                next_dlq_check = time.monotonic() + DLQ_CHECK_INTERVAL_S
            notify(report, "running")
            if report.dead_lettered and len(watcher.pending) <= report.dead_lettered:
                report.dead_letter_only = len(dead_letter_ids(fleet.settings, watcher.pending))
                if report.dead_letter_only == len(watcher.pending):
                    break  # the rest sits in a dead-letter queue: no result is coming
            if deadline.expired():
                break
            deadline.pause(RESULT_POLL_INTERVAL_S)
        report.dead_lettered = max(dead_letter_total(urls.broker_url, topology) - dlq_before, 0)
        report.dead_letter_only = len(dead_letter_ids(fleet.settings, watcher.pending))
        report.unfinished = len(watcher.pending) - report.dead_letter_only
        report.wall_s = (last_done - first_publish).total_seconds()
        report.latency_by_priority = by_priority

        finished_keys = [RESULT_KEY_PREFIX + i for i in sent_at if i not in watcher.pending]
        persist_deadline = Deadline(persist_timeout)
        while True:
            report.pg_rows = count_persisted(engine, finished_keys)
            notify(report, "persisting")
            if report.pg_rows >= len(finished_keys) or persist_deadline.expired():
                break
            fleet.check()
            persist_deadline.pause(POLL_INTERVAL_S * 2)
        return report
    finally:
        client.close()
        results.close()
        engine.dispose()
