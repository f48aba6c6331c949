"""W4 contract jobs: contracts/s through real prefork CPU workers, one job vs a 5-job chain.

``run(n)`` starts ``WORKER_PROCS`` CPU worker processes (taskfleet's cpu profile, plus
``-I taskfleet.tasks.contract_jobs``) on queues of its own, then measures, each from the
first publish until every final result is readable in Redis:

* fast path: ``n`` ``contract.process`` jobs published with one ``enqueue_many``;
* baseline: ``n`` ``cpu.noop`` jobs on the same workers (the framework's own cost);
* chain: ``n`` five-job chains (validate | normalise | fingerprint | evaluate | summarise).

It also times the pipeline in-process, so per-job framework overhead can be read off:
``overhead = procs / rate - compute`` (seconds a worker process spends per job beyond the
contract work itself). Every document differs (its reference), so nothing is deduplicated.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis

from bench.common import (
    WARMUP_JOBS,
    WORKER_PROCS,
    WORKER_READY_TIMEOUT_S,
    completion_timeout,
    poll_until,
)
from bench.procs import WorkerGroup
from bench.services import BENCH_STACK_DIR, services

PROCESS_KIND = "contract.process"
#: Same workers, empty job: the framework's own cost under the same machine load.
NOOP_KIND = "cpu.noop"
REDIS_SYSTEM = "taskfleet"
AS_OF = "2025-03-01"
COMPUTE_SAMPLES = 500
CHECK_CHUNK = 500
META_PREFIX = "celery-task-meta-"
PHASES_PER_CHAIN = 5


def make_contract(index: int, tag: str) -> dict[str, Any]:
    """A realistic small contract: 2 parties, 3 line items, 2 installments, 2 conditions."""
    return {
        "reference": f"W4-{tag}-{index}",
        "parties": [{"name": "Acme Ltd", "role": "seller"}, {"name": "Bob", "role": "buyer"}],
        "currency": "EUR",
        "line_items": [
            {"description": "Licence", "quantity": "3", "unit_price": "120.00", "tax_rate": "0.2"},
            {"description": "Support", "quantity": "12", "unit_price": "15.50"},
            {"description": "Setup", "quantity": "1", "unit_price": "99.99", "tax_rate": "0.2"},
        ],
        "payment_schedule": [
            {"due_date": "2025-02-01", "amount": "300.00"},
            {"due_date": "2025-06-01", "amount": "457.99"},
        ],
        "conditions": [
            {"id": "exclusive", "text": "Exclusive supply", "excludes": ["open"]},
            {"id": "open", "text": "Open supply", "starts_on": "2025-04-01"},
        ],
        "effective_date": "2025-01-01",
        "expiry_date": "2025-12-31",
        "metadata": {"bench": "w4", "index": index},
    }


def _wait_all(client: redis.Redis, job_ids: list[str], timeout: float, what: str) -> None:
    """Wait until every job id has a SUCCESS meta (oldest first, a chunk per round trip)."""
    pending = list(job_ids)

    def check() -> bool:
        while pending:
            chunk = pending[:CHECK_CHUNK]
            values = client.mget([META_PREFIX + job_id for job_id in chunk])
            done = 0
            for value in values:
                if value is None:
                    break
                status = json.loads(value)["status"]
                if status == "FAILURE":
                    raise RuntimeError(f"a contract job failed: {value[:300]!r}")
                if status != "SUCCESS":
                    break
                done += 1
            del pending[:done]
            if done < len(chunk):
                return False
        return True

    poll_until(check, timeout, what)


def _compute_s() -> float:
    """Seconds the pipeline itself takes per contract, in-process."""
    from taskfleet.contracts.pipeline import process

    docs = [make_contract(i, "compute") for i in range(COMPUTE_SAMPLES)]
    started = time.perf_counter()
    for doc in docs:
        process(doc, AS_OF)
    return (time.perf_counter() - started) / COMPUTE_SAMPLES


def run(n: int) -> dict[str, Any]:
    """Measure contract throughput on ``WORKER_PROCS`` prefork CPU worker processes.

    Args:
        n: Contracts per measurement (fast path and chain each).

    Returns:
        Rates (contracts/s, jobs/s), per-job overhead (ms) and the in-process compute time.
    """
    from taskfleet.app import create_app
    from taskfleet.client import Client
    from taskfleet.config import load_settings
    from taskfleet.contracts.api import contract_signature
    from taskfleet.workers.profiles import DISABLE_PERSISTER_ENV, cpu_profiles

    svc = services()
    url = svc.redis_for(REDIS_SYSTEM)
    tag = uuid.uuid4().hex[:8]
    queues = {"cpu_queue": f"cpu-w4-{tag}", "io_queue": f"io-w4-{tag}"}
    settings = load_settings(
        broker_url=url, redis_url=url, database_url=svc.sqlalchemy_url, **queues
    )
    env = {
        "TASKFLEET_BROKER_URL": url,
        "TASKFLEET_REDIS_URL": url,
        "TASKFLEET_DATABASE_URL": svc.sqlalchemy_url,
        "TASKFLEET_DATA_DIR": BENCH_STACK_DIR,
        "TASKFLEET_CPU_QUEUE": queues["cpu_queue"],
        "TASKFLEET_IO_QUEUE": queues["io_queue"],
    }
    # As taskfleet up plans them: WORKER_PROCS solo workers (the default), the first with the
    # persister; or one prefork worker of WORKER_PROCS processes.
    profiles = cpu_profiles(settings, WORKER_PROCS)
    workers = WorkerGroup("w4-contract")
    client = Client(create_app(settings))
    results = redis.Redis.from_url(url)
    try:
        for index, profile in enumerate(profiles):
            argv = profile.argv(hostname=f"w4-{profile.name}-{tag}@%h", loglevel="WARNING")
            workers.spawn(argv, env | ({DISABLE_PERSISTER_ENV: "1"} if index else {}))
        warmup = client.enqueue_many(
            [(PROCESS_KIND, make_contract(i, f"{tag}-warm")) for i in range(WARMUP_JOBS)]
        )
        _wait_all(results, [h.id for h in warmup], WORKER_READY_TIMEOUT_S, "warm-up")

        started = time.perf_counter()
        handles = client.enqueue_many(
            [(PROCESS_KIND, make_contract(i, f"{tag}-fast")) for i in range(n)]
        )
        _wait_all(results, [h.id for h in handles], completion_timeout(n), "fast path")
        fast_s = time.perf_counter() - started

        started = time.perf_counter()
        noops = client.enqueue_many([(NOOP_KIND, {"i": i}) for i in range(n)])
        _wait_all(results, [h.id for h in noops], completion_timeout(n), "no-op baseline")
        noop_s = time.perf_counter() - started

        started = time.perf_counter()
        finals = [
            contract_signature(client.app, make_contract(i, f"{tag}-chain"), AS_OF, "chain")
            .apply_async()
            .id
            for i in range(n)
        ]
        _wait_all(results, finals, completion_timeout(n * PHASES_PER_CHAIN), "chains")
        chain_s = time.perf_counter() - started
    finally:
        workers.stop()
        client.close()
        results.close()

    compute = _compute_s()
    fast_rate, chain_rate = n / fast_s, n / chain_s
    return {
        "n": n,
        "procs": WORKER_PROCS,
        "fast_contracts_per_s": fast_rate,
        "noop_jobs_per_s": n / noop_s,
        "chain_contracts_per_s": chain_rate,
        "chain_jobs_per_s": chain_rate * PHASES_PER_CHAIN,
        "fast_over_chain": fast_rate / chain_rate,
        "compute_ms_per_contract": compute * 1000,
        "fast_overhead_ms_per_job": (WORKER_PROCS / fast_rate - compute) * 1000,
        "chain_overhead_ms_per_contract": (WORKER_PROCS / chain_rate - compute) * 1000,
    }


if __name__ == "__main__":
    import sys

    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 500), indent=2))
