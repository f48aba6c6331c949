"""What a demo run measures, and the reads that measure it: results in Redis (one MGET per
chunk of keys), rows in Postgres, letters in the dead-letter queues.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from kombu import Connection
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import ProgrammingError

from taskfleet.config import Settings
from taskfleet.resilience.dlq import DeadLetterFilter, DeadLetterQueues
from taskfleet.results.store import FINAL_STATES, results_table
from taskfleet.routing.depth import queue_depths
from taskfleet.routing.topology import Topology

RESULT_KEY_PREFIX = "celery-task-meta-"
MGET_CHUNK = 1000
PG_COUNT_CHUNK = 1000


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
