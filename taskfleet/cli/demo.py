"""The demo: push a mixed, prioritised batch through a :class:`Fleet` and measure it.

The workload is :mod:`taskfleet.cli.demo_workload`, the measurements
:mod:`taskfleet.cli.demo_report`; nothing here prints (:mod:`taskfleet.cli.demo_output`
presents the results).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import UTC, datetime

import redis

from taskfleet.cli.demo_report import (
    RESULT_KEY_PREFIX,
    DemoReport,
    ResultWatcher,
    count_persisted,
    dead_letter_ids,
    dead_letter_total,
)
from taskfleet.cli.demo_workload import plan_workload
from taskfleet.client import Client
from taskfleet.fleet import POLL_INTERVAL_S, Deadline, Fleet
from taskfleet.results.store import make_engine
from taskfleet.routing.priority import PRIORITY_LEVELS
from taskfleet.routing.topology import Topology

DEFAULT_DEMO_JOBS = 2000
DEFAULT_DEMO_TIMEOUT_S = 300.0
DEFAULT_PUBLISH_CHUNK = 250
"""Jobs per :meth:`Client.enqueue_many` call (one pipeline each)."""

DEFAULT_PERSIST_TIMEOUT_S = 60.0
"""Seconds to wait for the persister to copy this run's results into Postgres."""

RESULT_POLL_INTERVAL_S = 0.25
"""Pause between two MGET rounds (measurements use ``date_done``, not when we looked)."""

DLQ_CHECK_INTERVAL_S = 1.0


def _parse_utc(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


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
