"""Tables for the feature workloads: R1 (resilience overhead), W4 (contracts), W5 (sandbox),
W6 (cache).

Each wraps the ``run`` function of its module (``w_resilience``, ``w4_contract``,
``w5_sandbox``, ``w6_cache``), repeats it, and reports median (min-max) with the target and
a verdict where one is set. All use the bench's services (:func:`bench.services.services`:
configured URLs, else ``.taskfleet/bench-stack``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from bench.common import Summary
from bench.report import NOT_AVAILABLE, Table
from bench.services import BENCH_STACK_DIR, flush_redis, services
from bench.workloads.base import Options, failure, log

R1_N, R1_QUICK_N = 2000, 300
W4_N, W4_QUICK_N = 200, 50
W5_N, W5_QUICK_N = 40, 10
W6_QUICK = {"samples": 500, "keys": 10_000, "requests": 5_000}
R1_TIMEOUT_S = 300.0
R1_TARGET_US = 200.0
W5_TARGET_MS = 50.0
W6_L1_TARGET_US = 5.0
W6_L2_TARGET_US = 300.0
W6_HIT_TARGET = 0.90


def _repeat(what: str, runs: int, body: Callable[[], dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for index in range(runs):
        log.info("%s run %d/%d", what, index + 1, runs)
        out.append(body())
    return out


def _get(run: dict[str, Any], path: str) -> Any:
    value: Any = run
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def summary(runs: list[dict[str, Any]], path: str) -> Summary | None:
    """Median/min/max of a dotted key over the runs that have it."""
    values = [v for v in (_get(r, path) for r in runs) if isinstance(v, int | float)]
    return Summary.of(values) if values else None


def fmt(s: Summary | None, digits: int = 1, scale: float = 1.0, unit: str = "") -> str:
    """``median (min-max)``; just the median for one run."""
    if s is None:
        return NOT_AVAILABLE
    m, lo, hi = s.median * scale, s.low * scale, s.high * scale
    if s.runs == 1:
        return f"{m:,.{digits}f}{unit}"
    return f"{m:,.{digits}f}{unit} ({lo:,.{digits}f}-{hi:,.{digits}f})"


def verdict(s: Summary | None, ok: Callable[[float], bool]) -> str:
    """``met``/``missed`` on the median (with how many runs met it when they disagree)."""
    if s is None:
        return NOT_AVAILABLE
    return "met" if ok(s.median) else "**missed**"


def _failed_table(table: Table, exc: BaseException, what: str) -> Table:
    table.rows.append([what, failure(what, exc), *[NOT_AVAILABLE] * (len(table.headers) - 2)])
    table.raw.append({"error": str(exc)})
    return table


# --- R1: resilience layer ---------------------------------------------------------------


def _resilience_once(n: int) -> dict[str, Any]:
    """``w_resilience.run(n)`` in a fresh interpreter pointed at the bench's Redis.

    The layer reads taskfleet's process-wide settings (``taskfleet.app``), so it runs in a
    subprocess whose ``TASKFLEET_*`` variables name the bench's services (own Redis db).
    """
    svc = services()
    url = svc.redis_for("resilience")
    flush_redis(url)
    env = {
        **os.environ,
        "PYTHONPATH": os.getcwd(),
        "TASKFLEET_BROKER_URL": url,
        "TASKFLEET_REDIS_URL": url,
        "TASKFLEET_DATABASE_URL": svc.sqlalchemy_url,
        "TASKFLEET_DATA_DIR": BENCH_STACK_DIR,
    }
    code = (
        "import json; from bench.workloads import w_resilience; "
        f"print(json.dumps(w_resilience.run({int(n)}), default=str))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=R1_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"w_resilience exited {proc.returncode}: {proc.stderr[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _lease(runs: list[dict[str, Any]]) -> str:
    leases = {r.get("lease_s") for r in runs}
    return ", ".join(str(lease) for lease in sorted(leases, key=str))


def r1(options: Options) -> Table:
    """R1: per-job cost of retry + breaker on a successful job (target < 200 µs)."""
    n = R1_QUICK_N if options.quick else R1_N
    table = Table(
        "R1",
        f"resilience layer overhead per successful job ({n:,} eager calls x 5 rounds per run)",
        ["figure", "µs/job median (min-max)", "target", "verdict"],
    )
    try:
        runs = _repeat("R1", options.runs, lambda: _resilience_once(n))
    except Exception as exc:
        return _failed_table(table, exc, "R1")
    over = summary(runs, "overhead_us")
    table.rows += [
        ["plain job (no retry, no breaker)", fmt(summary(runs, "plain_us")), "", ""],
        ["same job with `retry=` + `breaker=`", fmt(summary(runs, "retry_breaker_us")), "", ""],
        [
            "**overhead of the layer**",
            fmt(over),
            f"< {R1_TARGET_US:.0f} µs",
            verdict(over, lambda v: v < R1_TARGET_US),
        ],
        [
            "one Redis PING round trip (for scale)",
            fmt(summary(runs, "redis_round_trip_us")),
            "",
            "",
        ],
    ]
    table.notes += [
        "Eager calls in one process (no broker): what is timed is the middleware itself: "
        "poison check, the breaker admission, the retry layer's no-op on success. "
        "Each run is the median of 5 rounds (`bench/workloads/w_resilience.py`), in a fresh "
        "interpreter.",
        "The breaker state is in shared Redis; while it is closed a process admits from a "
        f"local lease (`TASKFLEET_RESILIENCE_BREAKER_LEASE`, {_lease(runs)} s here) and asks "
        "Redis once per renewal, with the successes batched since; "
        f"{fmt(summary(runs, 'leased_share'), 1, 100.0)} % of admissions came from the lease. "
        "With the lease at 0 every job pays about one Redis round trip.",
    ]
    table.raw += runs
    return table


# --- W4: contracts ------------------------------------------------------------------------


def w4(options: Options) -> Table:
    """W4: contract jobs through 2 real prefork CPU worker processes."""
    from bench.workloads import w4_contract

    n = W4_QUICK_N if options.quick else W4_N
    table = Table(
        "W4",
        f"contract jobs, {n:,} contracts per figure, 2 CPU worker processes (solo, the default)",
        ["figure", "median (min-max)"],
    )
    try:
        runs = _repeat("W4", options.runs, lambda: w4_contract.run(n))
    except Exception as exc:
        return _failed_table(table, exc, "W4")
    table.rows += [
        [
            "one job per contract (`contract.process`), contracts/s",
            fmt(summary(runs, "fast_contracts_per_s"), 0),
        ],
        [
            "5-job chain per contract, contracts/s",
            fmt(summary(runs, "chain_contracts_per_s"), 1),
        ],
        ["5-job chain, jobs/s", fmt(summary(runs, "chain_jobs_per_s"), 0)],
        ["baseline `cpu.noop`, jobs/s (same workers)", fmt(summary(runs, "noop_jobs_per_s"), 0)],
        ["one job ÷ chain (contracts/s)", fmt(summary(runs, "fast_over_chain"), 1, unit="x")],
        ["contract work in-process, ms/contract", fmt(summary(runs, "compute_ms_per_contract"), 2)],
        [
            "framework overhead, one job, ms/contract",
            fmt(summary(runs, "fast_overhead_ms_per_job"), 2),
        ],
        [
            "framework overhead, chain, ms/contract",
            fmt(summary(runs, "chain_overhead_ms_per_contract"), 2),
        ],
    ]
    table.notes += [
        "Each figure: first publish until every final result is readable in Redis; fresh "
        "CPU workers as `taskfleet up` plans them (`cpu_profiles`: 2 solo workers, acks late, prefetch 1, the first with the persister) per run.",
        "Overhead = worker processes ÷ rate - in-process contract time: the seconds a worker "
        "process spends per contract beyond the contract work. No target is set for W4.",
    ]
    table.raw += runs
    return table


# --- W5: sandbox --------------------------------------------------------------------------


def w5(options: Options) -> Table:
    """W5: sandbox runs/s and start-up overhead (target < 50 ms per run)."""
    from bench.workloads import w5_sandbox

    n = W5_QUICK_N if options.quick else W5_N
    table = Table(
        "W5",
        f"sandbox jobs, {n:,} runs of a trivial program per figure",
        ["path", "runs/s", "overhead ms/run", "target", "verdict"],
    )
    try:
        runs = _repeat("W5", options.runs, lambda: w5_sandbox.run(n))
    except Exception as exc:
        return _failed_table(table, exc, "W5")
    direct_over = summary(runs, "direct.overhead_ms_median")
    worker_over = summary(runs, "worker.overhead_ms_median")
    errors = [r["worker"]["error"] for r in runs if "error" in r.get("worker", {})]
    failed = sum(r.get("worker", {}).get("failed", 0) for r in runs)
    table.rows += [
        [
            "direct on `SandboxExecutor` (one at a time)",
            fmt(summary(runs, "direct.jobs_per_s"), 1),
            fmt(direct_over, 1),
            f"< {W5_TARGET_MS:.0f} ms",
            verdict(direct_over, lambda v: v < W5_TARGET_MS),
        ],
        [
            "through the CPU workers (2 solo processes, `sandbox.run`)",
            fmt(summary(runs, "worker.jobs_per_s"), 1)
            if not errors
            else failure("W5", Exception(errors[0])),
            fmt(worker_over, 1),
            f"< {W5_TARGET_MS:.0f} ms",
            verdict(worker_over, lambda v: v < W5_TARGET_MS),
        ],
    ]
    table.notes += [
        "Direct overhead = median wall time of a sandboxed `pass` - median of a bare "
        "`python -I -S -B -c pass` subprocess "
        f"({fmt(summary(runs, 'direct.bare_python_ms_median'), 1)} ms here); "
        f"median run {fmt(summary(runs, 'direct.run_ms_median'), 1)} ms, of which the "
        f"program itself {fmt(summary(runs, 'direct.program_ms_median'), 1)} ms.",
        "Through a worker: `overhead_s` the sandbox reports per run (elapsed - program wall "
        "time), median over the jobs; the n jobs are published at once with `enqueue_many`.",
    ]
    if failed:
        table.notes.append(f"{failed} sandbox job(s) did not succeed through the worker.")
    table.raw += runs
    return table


# --- W6: cache ----------------------------------------------------------------------------


def w6(options: Options) -> Table:
    """W6: tier hit latency and the Zipf hit ratio."""
    from bench.workloads import w6_cache

    svc = services()
    url = svc.redis_for("cache")
    sizes = W6_QUICK if options.quick else {}
    keys = sizes.get("keys", w6_cache.DEFAULT_KEYS)
    requests = sizes.get("requests", w6_cache.DEFAULT_REQUESTS)
    table = Table(
        "W6",
        "result cache: hit latency per tier; Zipf(1.1) over "
        f"{keys:,} keys, L1 = 1% of them, {requests:,} measured requests",
        ["figure", "median (min-max)", "target", "verdict"],
    )

    def once() -> dict[str, Any]:
        flush_redis(url)
        return w6_cache.run(url, svc.sqlalchemy_url, **sizes)

    try:
        runs = _repeat("W6", options.long_runs, once)
    except Exception as exc:
        return _failed_table(table, exc, "W6")
    l1, l2 = summary(runs, "l1_hit_us.p50"), summary(runs, "l2_hit_us.p50")
    hit = summary(runs, "zipf.combined_hit_ratio_before_l3")
    table.rows += [
        [
            "L1 (memory) hit, p50 µs",
            fmt(l1, 2),
            f"< {W6_L1_TARGET_US:.0f} µs",
            verdict(l1, lambda v: v < W6_L1_TARGET_US),
        ],
        ["L1 hit, p99 µs", fmt(summary(runs, "l1_hit_us.p99"), 2), "", ""],
        [
            "L2 (Redis) hit, p50 µs",
            fmt(l2, 0),
            f"< {W6_L2_TARGET_US:.0f} µs",
            verdict(l2, lambda v: v < W6_L2_TARGET_US),
        ],
        ["L2 hit, p99 µs", fmt(summary(runs, "l2_hit_us.p99"), 0), "", ""],
        ["L3 (PostgreSQL) hit, p50 µs", fmt(summary(runs, "l3_hit_us.p50"), 0), "", ""],
        ["L3 hit, p99 µs", fmt(summary(runs, "l3_hit_us.p99"), 0), "", ""],
        ["Zipf: L1 hit ratio", fmt(summary(runs, "zipf.l1_hit_ratio"), 1, 100, "%"), "", ""],
        [
            "Zipf: L1 + L2 hit ratio (before L3)",
            fmt(hit, 1, 100, "%"),
            f"≥ {W6_HIT_TARGET:.0%}",
            verdict(hit, lambda v: v >= W6_HIT_TARGET),
        ],
        ["Zipf: get/set ops/s through 3 tiers", fmt(summary(runs, "zipf.ops_per_s"), 0), "", ""],
    ]
    table.notes += [
        "Latency: `TieredCache.get` of a present key on a cache with only that tier, 2,000 "
        "calls after a warm-up (`bench/workloads/w6_cache.py`), the bench's Redis (own db) and "
        "PostgreSQL over loopback.",
        f"Zipf: {requests:,} warm-up requests, then {requests:,} measured; a miss computes and "
        "sets the value (written through to L2 and behind to L3). The hit ratio is deterministic "
        "(seeded), so W6 defaults to 1 run (`--runs` sets it).",
    ]
    table.raw += runs
    return table


TABLES: dict[str, Callable[[Options], Table]] = {"R1": r1, "W4": w4, "W5": w5, "W6": w6}
