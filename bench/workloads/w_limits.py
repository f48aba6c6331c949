"""L1: what a per-client rate limit adds to ``enqueue`` and ``enqueue_many`` (targets: under
100 µs per ``enqueue``, under 5 µs per job in ``enqueue_many``), and admission control's
cached check.

One client publishes with no gate; the same client with ``client_id`` under a limit high
enough never to refuse (one GCRA Lua call per call, before the publish); the same with an
overload bound (a cached backlog reading, refreshed every 250 ms). Each figure is the median
of ``ROUNDS`` rounds; the queues (the bench's own Redis database) are emptied between rounds.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

from bench.report import Table
from bench.services import flush_redis, services
from bench.workloads.base import Options, failure, log
from taskfleet.app import create_app
from taskfleet.client import Client
from taskfleet.config import load_settings
from taskfleet.config.limits import load_limit_settings

L1_N, L1_QUICK_N = 2000, 300
BATCH, QUICK_BATCH = 10_000, 2_000
ROUNDS = 7
ENQUEUE_TARGET_US = 100.0
BATCH_TARGET_US = 5.0
#: A limit no round reaches: every call is checked, none refused.
NEVER_REACHED = "10000000/s burst=10000000"
CLIENT_ID = "bench-client"


def _clients(url: str, database_url: str) -> dict[str, Client]:
    tag = uuid.uuid4().hex[:6]
    settings = load_settings(
        broker_url=url,
        redis_url=url,
        database_url=database_url,
        cpu_queue=f"cpu-l1-{tag}",
        io_queue=f"io-l1-{tag}",
    )
    app = create_app(settings)
    limited = load_limit_settings(enqueue={CLIENT_ID: NEVER_REACHED})
    guarded = load_limit_settings(overload_backlog=1_000_000_000)
    return {
        "plain": Client(app, client_id=CLIENT_ID, limits=load_limit_settings()),
        "limited": Client(app, client_id=CLIENT_ID, limits=limited),
        "overload": Client(app, client_id=CLIENT_ID, limits=guarded),
    }


def _timed(body: Callable[[], object], reset: Callable[[], object]) -> float:
    reset()
    start = time.perf_counter()
    body()
    return time.perf_counter() - start


def _cpu_costs(clients: dict[str, Client], n: int, server: redis.Redis) -> dict[str, float]:
    """CPU per ``enqueue``, which the machine's load moves less than wall time: the
    producer's (``process_time``) and Redis's (``INFO commandstats``), plain and limited."""
    out: dict[str, float] = {}
    for name in ("plain", "limited"):
        client = clients[name]
        server.config_resetstat()
        started = time.process_time()
        for i in range(n):
            client.enqueue("cpu.noop", i)
        out[f"{name}_client_cpu_us"] = round((time.process_time() - started) / n * 1e6, 1)
        stats = server.info("commandstats")
        used = sum(v["usec"] for k, v in stats.items() if k != "cmdstat_config")
        out[f"{name}_redis_cpu_us"] = round(used / n, 1)
        server.flushdb()
    return out


def run(n: int = L1_N, batch: int = BATCH) -> dict[str, Any]:
    """Per-call and per-job figures in microseconds (medians over ``ROUNDS`` rounds)."""
    svc = services()
    url = svc.redis_for("limits")
    flush_redis(url)
    clients = _clients(url, svc.sqlalchemy_url)
    flush = redis.Redis.from_url(url).flushdb
    jobs = [("cpu.noop", i) for i in range(batch)]
    out: dict[str, Any] = {"n": n, "batch": batch}
    loops: dict[str, list[float]] = {name: [] for name in clients}
    batches: dict[str, list[float]] = {name: [] for name in clients}
    for client in clients.values():
        for i in range(min(n, 200)):  # warm up: scripts, connections, templates
            client.enqueue("cpu.noop", i)
    for _ in range(ROUNDS):  # interleaved, so a busy moment of the machine hits all three
        for name, client in clients.items():
            loops[name].append(
                _timed(lambda c=client: [c.enqueue("cpu.noop", i) for i in range(n)], flush)
            )
            batches[name].append(_timed(lambda c=client: c.enqueue_many(jobs), flush))
    out |= _cpu_costs(clients, n, redis.Redis.from_url(url))
    for name, client in clients.items():
        out[f"{name}_enqueue_us"] = round(statistics.median(loops[name]) / n * 1e6, 2)
        out[f"{name}_batch_job_us"] = round(statistics.median(batches[name]) / batch * 1e6, 3)
        client.close()
    flush()
    for what in ("enqueue_us", "batch_job_us"):
        for name in ("limited", "overload"):
            out[f"{name}_added_{what}"] = round(out[f"{name}_{what}"] - out[f"plain_{what}"], 3)
    return out


def table(options: Options) -> Table:
    """L1: the enqueue gate's cost, per ``enqueue`` and per job of an ``enqueue_many``."""
    n, batch = (L1_QUICK_N, QUICK_BATCH) if options.quick else (L1_N, BATCH)
    result = Table(
        "L1",
        f"per-client rate limit at enqueue ({n:,} enqueues, batches of {batch:,}; "
        f"median of {ROUNDS} rounds per run)",
        ["figure", "enqueue (µs/call)", "enqueue_many (µs/job)", "target", "verdict"],
    )
    try:
        runs = []
        for index in range(options.runs):
            log.info("L1 run %d/%d", index + 1, options.runs)
            runs.append(run(n, batch))
    except Exception as exc:
        result.notes.append(f"not measured: {failure('taskfleet', exc)}")
        return result

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    ok = med("limited_added_enqueue_us") < ENQUEUE_TARGET_US
    ok = ok and med("limited_added_batch_job_us") < BATCH_TARGET_US
    result.rows += [
        ["no gate", f"{med('plain_enqueue_us'):.1f}", f"{med('plain_batch_job_us'):.2f}", "", ""],
        [
            "client under a limit",
            f"{med('limited_enqueue_us'):.1f}",
            f"{med('limited_batch_job_us'):.2f}",
            "",
            "",
        ],
        [
            "**added by the limit**",
            f"{med('limited_added_enqueue_us'):.1f}",
            f"{med('limited_added_batch_job_us'):.3f}",
            f"< {ENQUEUE_TARGET_US:.0f} µs / < {BATCH_TARGET_US:.0f} µs",
            "met" if ok else "MISSED",
        ],
        [
            "CPU added per `enqueue`: producer + Redis",
            f"{med('limited_client_cpu_us') - med('plain_client_cpu_us'):.1f} + "
            f"{med('limited_redis_cpu_us') - med('plain_redis_cpu_us'):.1f}",
            "",
            "",
            "",
        ],
        [
            "added by an overload bound (cached reading)",
            f"{med('overload_added_enqueue_us'):.1f}",
            f"{med('overload_added_batch_job_us'):.3f}",
            "",
            "",
        ],
    ]
    result.notes.extend(
        [
            "The broker is the limits' Redis here (the default), so the GCRA script also pushes "
            "the jobs it admits: a limited call is one round trip, as an unlimited one. With the "
            "limits on another Redis (`TASKFLEET_LIMITS_STORAGE_URL`) or a keyed job, the check "
            "is one more round trip before the publish. A batch is checked once (all or nothing).",
            "Rounds of the three clients are interleaved; the machine's load moves every figure.",
        ]
    )
    result.raw += runs
    return result
