"""W2 enqueue only: no workers, publish N jobs, jobs/s; plus the Redis ceiling."""

from __future__ import annotations

import time
from typing import Any

from bench.common import Summary
from bench.report import NOT_AVAILABLE, Table, fmt_rate, fmt_ratio
from bench.workloads import ceiling
from bench.workloads.base import Options, failure, log, open_system

WORKLOAD = "W2"
REFERENCE = "taskfleet"


def run(options: Options) -> Table:
    """Measure W2 for every selected system and the ceiling.

    Args:
        options: CLI options.

    Returns:
        The table.
    """
    table = Table(
        WORKLOAD,
        f"enqueue only, {options.n:,} jobs, no workers (jobs/s)",
        ["system", "method", "jobs/s median (min-max)", "taskfleet ÷ this"],
        notes=[
            "Ratio: a loop row is compared with taskfleet's `enqueue` loop, a batch or "
            "ceiling row with taskfleet's `enqueue_many`.",
            "Stock Celery with a Redis result backend also subscribes to each task's result "
            "channel in `apply_async`, which is part of its publish cost.",
        ],
    )
    measured: list[tuple[str, str, str, Summary | None, str | None]] = []
    for name in options.systems:
        system = open_system(name)
        if isinstance(system, str):
            measured.append((name, "", "loop", None, system))
            continue
        for variant in system.enqueue_variants():
            values: list[float] = []
            try:
                for index in range(options.runs):
                    log.info("W2 %s %s run %d/%d", name, variant.label, index + 1, options.runs)
                    system.reset()
                    started = time.perf_counter()
                    variant.publish(options.n)
                    values.append(options.n / (time.perf_counter() - started))
                system.reset()
            except Exception as exc:
                measured.append(
                    (system.label, variant.label, variant.mode, None, failure(name, exc))
                )
                continue
            summary = Summary.of(values)
            measured.append((system.label, variant.label, variant.mode, summary, None))
            table.raw.append(
                {"system": name, "method": variant.label, "jobs_per_s": summary.as_dict()}
            )
    _add_ceiling(options, measured, table)
    ref: dict[str, float] = {}
    for label, _method, mode, summary, _err in measured:
        if label == REFERENCE and summary is not None:
            ref[mode] = summary.median
    for label, method, mode, summary, err in measured:
        ours = ref.get("batch" if mode in ("batch", "ceiling") else "loop")
        ratio = fmt_ratio(ours, summary.median if summary else None)
        table.rows.append([label, method, err or fmt_rate(summary), ratio])
    return table


def _add_ceiling(
    options: Options, measured: list[tuple[str, str, str, Summary | None, str | None]], table: Table
) -> None:
    try:
        values = []
        for index in range(options.runs):
            log.info("W2 ceiling pipelined LPUSH run %d/%d", index + 1, options.runs)
            values.append(ceiling.pipelined_lpush(options.n))
        summary: Summary | None = Summary.of(values)
        measured.append(("redis-py", "pipelined LPUSH (ceiling)", "ceiling", summary, None))
    except Exception as exc:
        measured.append(
            ("redis-py", "pipelined LPUSH (ceiling)", "ceiling", None, failure("ceiling", exc))
        )
        summary = None
    raw: dict[str, Any] = {
        "system": "ceiling",
        "pipelined_lpush": summary.as_dict() if summary else None,
    }
    try:
        log.info("W2 ceiling redis-benchmark")
        rps = ceiling.redis_benchmark_lpush()
    except Exception as exc:
        rps = None
        log.error("redis-benchmark failed: %s", exc)
    if rps is None:
        measured.append(("redis-benchmark", "-q -t lpush", "ceiling", None, NOT_AVAILABLE))
    else:
        measured.append(
            (
                "redis-benchmark",
                "-q -t lpush (50 clients, 1 run)",
                "ceiling",
                Summary.of([rps]),
                None,
            )
        )
    raw["redis_benchmark_lpush"] = rps
    table.raw.append(raw)
