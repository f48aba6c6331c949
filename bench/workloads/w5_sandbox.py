"""W5 sandbox: sandbox jobs/s and per-run start-up overhead, on the executor and via a worker.

Overhead per run is the wall time of a sandboxed ``pass`` minus that of the same program run
as a bare ``python -I -S -c pass`` subprocess: what isolation costs on top of starting Python.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from taskfleet.sandbox import SandboxExecutor

TRIVIAL = {"source": "pass", "stdin": None, "limits": {}}
WORKER_TIMEOUT_S = 120.0


def _median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 2)


def _bare_python_s(n: int) -> list[float]:
    python = os.path.realpath(sys.executable)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        subprocess.run([python, "-I", "-S", "-B", "-c", "pass"], check=True)
        times.append(time.perf_counter() - started)
    return times


def _direct(n: int) -> dict[str, Any]:
    executor = SandboxExecutor()
    try:
        executor.run(TRIVIAL)  # warm: probe, first launcher
        totals, inside = [], []
        started = time.perf_counter()
        for _ in range(n):
            t0 = time.perf_counter()
            result = executor.run(TRIVIAL)
            totals.append(time.perf_counter() - t0)
            inside.append(result.wall_time_s)
            if result.status != "succeeded":
                raise RuntimeError(f"sandbox run failed: {result.error}")
        elapsed = time.perf_counter() - started
    finally:
        executor.close()
    bare = _bare_python_s(max(5, n // 4))
    return {
        "jobs_per_s": round(n / elapsed, 2),
        "run_ms_median": _median_ms(totals),
        "program_ms_median": _median_ms(inside),
        "bare_python_ms_median": _median_ms(bare),
        "overhead_ms_median": round(_median_ms(totals) - _median_ms(bare), 2),
    }


def _through_worker(n: int) -> dict[str, Any]:
    """One prefork CPU worker per core on private queues; n jobs published at once."""
    import taskfleet.tasks.sandbox_jobs  # noqa: F401 - routes sandbox.run to the CPU pool
    from bench.services import BENCH_STACK_DIR, services
    from taskfleet.client import Client, JobSpec
    from taskfleet.config import load_settings
    from taskfleet.workers.profiles import cpu_profiles
    from tests.support.workers import Fleet

    # The bench's own services (configured URLs, else .taskfleet/bench-stack), not the
    # test suite's stack: tests.support.services.service_env() would start that one.
    svc = services()
    url = svc.redis_for("taskfleet")
    suffix = uuid.uuid4().hex[:8]
    env = {
        "TASKFLEET_BROKER_URL": url,
        "TASKFLEET_REDIS_URL": url,
        "TASKFLEET_DATABASE_URL": svc.sqlalchemy_url,
        "TASKFLEET_DATA_DIR": BENCH_STACK_DIR,
        "TASKFLEET_EMBEDDED": "false",
        "TASKFLEET_CPU_QUEUE": f"cpu-w5-{suffix}",
        "TASKFLEET_IO_QUEUE": f"io-w5-{suffix}",
        "TASKFLEET_NO_PERSISTER": "1",
    }
    fleet = Fleet(env, Path(tempfile.mkdtemp(prefix="w5-")))
    settings = load_settings(**fleet.settings_overrides)
    profiles = cpu_profiles(settings, os.cpu_count() or 1)
    try:  # as taskfleet up plans them: one solo worker per process (the default)
        fleet.start_all([(p, p.name) for p in profiles])
        client = Client(fleet.app())
        client.enqueue("sandbox.run", TRIVIAL).result(WORKER_TIMEOUT_S)  # warm
        started = time.perf_counter()
        handles = client.enqueue_many([JobSpec("sandbox.run", TRIVIAL) for _ in range(n)])
        results = [h.result(WORKER_TIMEOUT_S) for h in handles]
        elapsed = time.perf_counter() - started
    finally:
        fleet.stop()
    failed = [r for r in results if r["status"] != "succeeded"]
    return {
        "jobs_per_s": round(n / elapsed, 2),
        "workers": sum(p.concurrency for p in profiles),
        "failed": len(failed),
        "overhead_ms_median": _median_ms([r["overhead_s"] for r in results]),
    }


def run(n: int) -> dict[str, Any]:
    """Measure sandbox runs directly on the executor, then through a real CPU worker.

    Args:
        n: Sandbox runs per measurement.

    Returns:
        ``{"direct": {...}, "worker": {...}}`` with jobs/s and overhead figures (ms).
    """
    report: dict[str, Any] = {"n": n, "direct": _direct(n)}
    try:
        report["worker"] = _through_worker(n)
    except Exception as exc:  # the direct figures still stand
        report["worker"] = {"error": f"{type(exc).__name__}: {exc}"}
    return report


if __name__ == "__main__":
    import json

    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 50), indent=2))
