"""W1 end to end: publish N no-op jobs, 2 worker processes, until every result is readable."""

from __future__ import annotations

import time
from typing import Any

from bench.common import Summary, completion_timeout
from bench.report import NOT_AVAILABLE, Table, fmt_mib, fmt_rate, fmt_ratio
from bench.systems.base import System
from bench.workloads.base import Options, failure, log, open_system, with_workers

WORKLOAD = "W1"
REFERENCE = "taskfleet"


def _one_run(system: System, n: int) -> dict[str, Any]:
    started = time.perf_counter()
    keys = system.publish(n)
    published = time.perf_counter() - started
    system.wait_all(keys, completion_timeout(n))
    elapsed = time.perf_counter() - started
    extras = system.extra_after_drain(n, started)
    return {
        "jobs_per_s": n / elapsed,
        "publish_s": published,
        "elapsed_s": elapsed,
        "peak_rss_bytes": system.peak_rss_bytes(),
        **extras,
    }


def run(options: Options) -> Table:
    """Measure W1 for every selected system.

    Args:
        options: CLI options.

    Returns:
        The table.
    """
    table = Table(
        WORKLOAD,
        f"end to end, {options.n:,} no-op jobs, {options.procs} worker processes (jobs/s)",
        ["system", "jobs/s median (min-max)", "peak worker RSS MiB", "taskfleet ÷ this"],
        notes=[
            "Timed from the first publish until every result is readable (Redis key, SQL row, "
            "or for ignore_result the counter reaching N with the queue empty).",
            "Publishing: taskfleet one `enqueue_many`; RQ `enqueue_many`; Celery an "
            "`apply_async` loop; Dramatiq a `send` loop. Publishing overlaps with consuming.",
        ],
    )
    rates: dict[str, Summary] = {}
    cells: dict[str, list[str]] = {}
    for name in options.systems:
        system = open_system(name)
        if isinstance(system, str):
            cells[name] = [name, system, NOT_AVAILABLE]
            continue
        runs: list[dict[str, Any]] = []
        try:
            for index in range(options.runs):
                log.info("W1 %s run %d/%d", name, index + 1, options.runs)
                runs.append(with_workers(system, options.procs, lambda s: _one_run(s, options.n)))
        except Exception as exc:
            cells[name] = [system.label, failure(name, exc), NOT_AVAILABLE]
            table.raw.append({"system": name, "runs": runs, "error": str(exc)})
            continue
        rate = Summary.of([r["jobs_per_s"] for r in runs])
        rss = Summary.of([r["peak_rss_bytes"] for r in runs])
        rates[name] = rate
        cells[name] = [system.label, fmt_rate(rate), fmt_mib(rss)]
        entry: dict[str, Any] = {"system": name, "jobs_per_s": rate.as_dict(), "runs": runs}
        if "durable_jobs_per_s" in runs[0]:
            durable = Summary.of([r["durable_jobs_per_s"] for r in runs])
            entry["durable_jobs_per_s"] = durable.as_dict()
            table.notes.append(
                f"{system.label}: until every result is also in Postgres (persister): "
                f"{fmt_rate(durable)} jobs/s."
            )
        table.raw.append(entry)
    ours = rates.get(REFERENCE)
    for name in options.systems:
        theirs = rates.get(name)
        table.rows.append(
            [
                *cells[name],
                fmt_ratio(ours.median if ours else None, theirs.median if theirs else None),
            ]
        )
    return table
