"""``python -m bench``: run the workloads, print Markdown tables, write ``bench/results/``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.report import Table
from bench.services import stop_started
from bench.systems import SYSTEM_NAMES
from bench.workloads import (
    features,
    w1_end_to_end,
    w2_enqueue,
    w3_latency,
    w7_autoscale,
    w_balancing,
    w_cost,
    w_limits,
    w_metrics,
    w_sharding,
)
from bench.workloads.base import (
    DEFAULT_LATENCY_RATE,
    DEFAULT_LATENCY_SECONDS,
    DEFAULT_N,
    DEFAULT_RUNS,
    QUICK_LATENCY_SECONDS,
    QUICK_N,
    Options,
)

WORKLOADS = ("W1", "W2", "W3", "R1", "W4", "W5", "W6", "W7", "B1", "L1", "M1", "S1", "C1")
RESULTS_DIR = Path(__file__).parent / "results"
LATEST_MD = "latest.md"
LATEST_JSON = "latest.json"
KIB = 1024


def _csv(value: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [v for v in items if v not in allowed]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown {what}: {', '.join(unknown)} (known: {', '.join(allowed)})"
        )
    return items


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        The namespace.
    """
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small N, 1 run (smoke test)")
    parser.add_argument(
        "--only",
        type=lambda v: _csv(v.upper(), WORKLOADS, "workload"),
        default=WORKLOADS,
        help="workloads, e.g. W1,W2 (R1 = resilience-layer overhead, B1 = balancer overhead, "
        "L1 = rate-limit overhead, M1 = job metrics per job, S1 = sharding, "
        "C1 = cost per job by component)",
    )
    parser.add_argument(
        "--systems",
        type=lambda v: _csv(v, SYSTEM_NAMES, "system"),
        default=SYSTEM_NAMES,
        help=f"systems, e.g. taskfleet,celery_redis (all: {','.join(SYSTEM_NAMES)})",
    )
    parser.add_argument("--n", type=int, help=f"jobs for W1/W2 (default {DEFAULT_N})")
    parser.add_argument(
        "--runs",
        type=int,
        help=f"runs per figure (default {DEFAULT_RUNS}; W6 and W7 default to 1)",
    )
    parser.add_argument("--rate", type=float, default=DEFAULT_LATENCY_RATE, help="W3 jobs/s")
    parser.add_argument("--seconds", type=float, help="W3 duration")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results")
    parser.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    return parser.parse_args(argv)


def machine() -> dict[str, Any]:
    """The machine and service versions, for the report."""
    from bench.services import server_versions

    model = "?"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kib = 0
    try:
        with open("/proc/meminfo") as meminfo:
            mem_kib = int(meminfo.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "ram_gib": round(mem_kib / KIB / KIB, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }
    try:
        info |= server_versions()
    except Exception as exc:
        info["services_error"] = str(exc)
    return info


def run_workload(workload: str, options: Options) -> list[Table]:
    """Run one workload.

    Args:
        workload: ``W1``..``W7``, ``R1``, ``B1``, ``L1``, ``M1`` or ``S1``.
        options: Options.

    Returns:
        Its tables (W3 adds one at the target rate unless ``--quick``).
    """
    if workload == "W1":
        return [w1_end_to_end.run(options)]
    if workload == "W2":
        return [w2_enqueue.run(options)]
    if workload == "W3":
        at_target = None if options.quick else w3_latency.run_at_target(options)
        return [w3_latency.run(options), *([at_target] if at_target else [])]
    if workload == "W7":
        return [w7_autoscale.table(options)]
    if workload == "B1":
        return [w_balancing.table(options)]
    if workload == "L1":
        return [w_limits.table(options)]
    if workload == "M1":
        return [w_metrics.table(options)]
    if workload == "S1":
        return [w_sharding.table(options)]
    if workload == "C1":
        return [w_cost.table(options)]
    return [features.TABLES[workload](options)]


def main(argv: list[str] | None = None) -> int:
    """Run the selected workloads and report; stop the embedded stack if this run started it.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        Exit status: 0, or 1 when a measurement failed.
    """
    args = parse_args(argv)
    try:
        return _run(args)
    finally:
        stop_started()


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    options = Options(
        systems=args.systems,
        runs=args.runs or (1 if args.quick else DEFAULT_RUNS),
        n=args.n or (QUICK_N if args.quick else DEFAULT_N),
        latency_rate=args.rate,
        latency_seconds=args.seconds
        or (QUICK_LATENCY_SECONDS if args.quick else DEFAULT_LATENCY_SECONDS),
        quick=args.quick,
        long_runs=args.runs or 1,
    )
    started = time.perf_counter()
    info = machine()
    tables: list[Table] = []
    timings: dict[str, float] = {}
    for workload in args.only:
        began = time.perf_counter()
        for table in run_workload(workload, options):
            tables.append(table)
            print(table.markdown(), flush=True)
        timings[workload] = time.perf_counter() - began
    elapsed = time.perf_counter() - started
    header = (
        f"## taskfleet benchmarks ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)\n\n"
        f"Machine: {info.get('nproc')} CPUs ({info.get('cpu_model')}), {info.get('ram_gib')} GiB "
        f"RAM, Python {info.get('python')}, Redis {info.get('redis', '?')}, "
        f"PostgreSQL {info.get('postgres', '?')}. Runs per figure: {options.runs}; "
        f"N = {options.n:,}; total time {elapsed:,.0f} s"
        f"{' (--quick)' if args.quick else ''}"
        f" ({', '.join(f'{w} {s:,.0f} s' for w, s in timings.items())}).\n"
    )
    print(header)
    if not args.no_write:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        body = header + "\n" + "\n".join(t.markdown() for t in tables)
        (RESULTS_DIR / LATEST_MD).write_text(body)
        payload = {
            "generated_utc": datetime.now(UTC).isoformat(),
            "quick": args.quick,
            "options": {
                "systems": list(options.systems),
                "runs": options.runs,
                "n": options.n,
                "procs": options.procs,
                "latency_rate": options.latency_rate,
                "latency_seconds": options.latency_seconds,
                "long_runs": options.long_runs,
            },
            "machine": info,
            "elapsed_s": elapsed,
            "workload_s": timings,
            "tables": [t.as_dict() for t in tables],
        }
        (RESULTS_DIR / LATEST_JSON).write_text(json.dumps(payload, indent=2) + "\n")
    failed = any("failed:" in cell for t in tables for row in t.rows for cell in row)
    return 1 if failed else 0
