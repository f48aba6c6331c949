"""Per-job overhead of the retry + breaker layer on a successful job (target under 200 µs).

Runs a job kind declared with ``retry=`` and ``breaker=`` eagerly in this process (no broker:
what is measured is the middleware: poison check, the breaker admission (from the process's
lease while the breaker is closed; one storage round trip per lease renewal, which also
carries the batched successes), the retry layer's no-op on success) against the same body
without them, and reports the difference per job, with a plain Redis round trip for scale.
``TASKFLEET_RESILIENCE_BREAKER_LEASE=0`` measures one admission round trip per job;
``TASKFLEET_RESILIENCE_BREAKER_STORAGE_URL=memory://`` isolates the Python cost of the layer.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from celery import Celery

from taskfleet.config import load_settings
from taskfleet.resilience.middleware import install
from taskfleet.resilience.retry import exponential
from taskfleet.resilience.runtime import runtime
from taskfleet.resilience.storage import RedisStorage
from taskfleet.tasks.base import TaskfleetTask, job

BREAKER = "bench-resilience"
ROUNDS = 5


def _app() -> tuple[Any, Any]:
    app = Celery("bench-resilience", task_cls=TaskfleetTask, set_as_current=False)
    app.taskfleet_settings = load_settings()
    install(app)

    @job(app, "bench.plain", "cpu")
    def plain(x: int) -> int:
        return x

    @job(app, "bench.guarded", "cpu", retry=exponential(3), breaker=BREAKER)
    def guarded(x: int) -> int:
        return x

    return plain, guarded


def _per_job_us(task: Any, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        task(i)
    return (time.perf_counter() - start) / n * 1e6


def run(n: int = 2000) -> dict[str, Any]:
    """Median over ``ROUNDS`` rounds of ``n`` calls each; figures in microseconds per job."""
    plain, guarded = _app()
    storage = runtime().storage
    if isinstance(storage, RedisStorage):
        storage.reset(BREAKER)
    _per_job_us(guarded, min(n, 200))  # warm up: script load, connections
    base = [_per_job_us(plain, n) for _ in range(ROUNDS)]
    layered = [_per_job_us(guarded, n) for _ in range(ROUNDS)]
    overhead = statistics.median(layered) - statistics.median(base)
    client = runtime().redis
    start = time.perf_counter()
    for _ in range(n):
        client.ping()
    ping_us = (time.perf_counter() - start) / n * 1e6
    local = runtime().breaker(BREAKER).counters
    return {
        "jobs_per_round": n,
        "plain_us": round(statistics.median(base), 1),
        "retry_breaker_us": round(statistics.median(layered), 1),
        "overhead_us": round(overhead, 1),
        "redis_round_trip_us": round(ping_us, 1),  # per job, without the lease
        "lease_s": runtime().resilience.breaker_lease,
        # Share of admissions served by the lease (no storage round trip).
        "leased_share": round(local["leased"] / max(local["allowed"], 1), 4),
        "target_us": 200,
        "within_target": overhead < 200,
        "breaker": runtime().breaker(BREAKER).snapshot(),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2, default=str))
