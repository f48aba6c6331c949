"""Counting: executions from the ``diag.record`` log, results from Redis and Postgres.

* sent -- ids the producer's enqueue call returned for (the broker accepted them);
* executions -- "start" entries of an id in the execution log (a run killed midway counts);
* ok -- ids with a SUCCESS result in Redis (``celery-task-meta-<id>``) or in Postgres;
* duplicated -- sum over ids of (executions - 1);
* dead-lettered -- ids found in the fleet's dead-letter queues;
* lost -- sent - ok - dead-lettered, read once the fleet has settled.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import redis

from taskfleet.config import Settings
from taskfleet.resilience.diag_keys import record_log_key
from taskfleet.resilience.dlq import DeadLetterQueues

RESULT_KEY_PREFIX = "celery-task-meta-"
RESULTS_TABLE = "taskfleet_results"
CHUNK = 500
SUCCESS = "SUCCESS"


@dataclass
class Executions:
    """The execution log, grouped by job id."""

    starts: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    dones: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def parse(cls, raw: Iterable[bytes | str]) -> Executions:
        """Group raw log entries (JSON) by id and phase."""
        out = cls()
        for item in raw:
            entry = json.loads(item)
            (out.starts if entry["phase"] == "start" else out.dones)[entry["id"]].append(entry)
        return out

    def duplicated(self, ids: Iterable[str]) -> int:
        """Executions beyond the first, summed over ``ids``."""
        return sum(max(0, len(self.starts.get(i, ())) - 1) for i in ids)

    def running_on(self, pids: set[int], before: float | None = None) -> set[str]:
        """Ids whose latest start (before ``before``) ran in ``pids`` with no end logged then."""
        out: set[str] = set()
        for job_id, all_starts in self.starts.items():
            starts = [s for s in all_starts if before is None or s["at"] <= before]
            if not starts:
                continue
            last = starts[-1]
            ended = [
                d
                for d in self.dones.get(job_id, ())
                if d["pid"] == last["pid"] and (before is None or d["at"] <= before)
            ]
            if last["pid"] in pids and not ended:
                out.add(job_id)
        return out

    def unfinished_pids(self) -> set[int]:
        """Pids of executions started without an end logged yet."""
        ended = {(i, d["pid"]) for i, ds in self.dones.items() for d in ds}
        return {s["pid"] for i, ss in self.starts.items() for s in ss if (i, s["pid"]) not in ended}

    def first_done_after(
        self, at: float, ids: set[str] | None = None, elsewhere_than: set[int] | None = None
    ) -> float | None:
        """The earliest end logged after ``at`` (of ``ids``, outside ``elsewhere_than``)."""
        times = [
            d["at"]
            for i, ds in self.dones.items()
            if ids is None or i in ids
            for d in ds
            if d["at"] > at and not (elsewhere_than and d["pid"] in elsewhere_than)
        ]
        return min(times) if times else None


class Ledger:
    """Reads one scenario's execution log, results and dead letters.

    Args:
        settings: The fleet's settings (Redis, Postgres, queues).
        log_name: The execution log the scenario's jobs append to.
    """

    def __init__(self, settings: Settings, log_name: str) -> None:
        """Bind to the scenario's services."""
        self.settings = settings
        self.redis = redis.Redis.from_url(str(settings.redis_url))
        self.log_key = record_log_key(log_name)
        self.libpq_url = str(settings.database_url).replace(
            "postgresql+psycopg://", "postgresql://"
        )

    def executions(self) -> Executions:
        """The log as it stands."""
        return Executions.parse(self.redis.lrange(self.log_key, 0, -1))

    def ok_in_redis(self, ids: list[str]) -> set[str]:
        """Ids whose Redis result says SUCCESS."""
        found: set[str] = set()
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            values = self.redis.mget([RESULT_KEY_PREFIX + i for i in chunk])
            for job_id, raw in zip(chunk, values, strict=True):
                if raw is not None and json.loads(raw).get("status") == SUCCESS:
                    found.add(job_id)
        return found

    def states(self, ids: list[str]) -> dict[str, int]:
        """How many of ``ids`` have each result state in Redis (``none``: no result)."""
        counts: dict[str, int] = defaultdict(int)
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            for raw in self.redis.mget([RESULT_KEY_PREFIX + i for i in chunk]):
                counts["none" if raw is None else str(json.loads(raw).get("status"))] += 1
        return dict(counts)

    def ok_in_postgres(self, ids: list[str]) -> set[str]:
        """Ids whose Postgres row says SUCCESS (none when Postgres or the table is missing)."""
        found: set[str] = set()
        try:
            with psycopg.connect(self.libpq_url, autocommit=True, connect_timeout=2) as conn:
                if conn.execute("SELECT to_regclass(%s)", (RESULTS_TABLE,)).fetchone() == (None,):
                    return found
                for start in range(0, len(ids), CHUNK):
                    keys = [RESULT_KEY_PREFIX + i for i in ids[start : start + CHUNK]]
                    rows = conn.execute(
                        f"SELECT task_id FROM {RESULTS_TABLE} WHERE key = ANY(%s) AND status = %s",
                        (keys, SUCCESS),
                    ).fetchall()
                    found.update(str(r[0]) for r in rows)
        except psycopg.OperationalError:
            return found
        return found

    def dead_lettered(self, ids: Iterable[str]) -> set[str]:
        """Ids present in the fleet's dead-letter queues."""
        wanted = set(ids)
        return {d.id for d in DeadLetterQueues(self.settings).list() if d.id in wanted}

    def close(self) -> None:
        """Close the Redis client."""
        self.redis.close()
