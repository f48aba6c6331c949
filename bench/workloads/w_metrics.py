"""M1: what the job metrics cost per job (issue 22: target under 20 µs).

The worker records a job with two Celery signal receivers, ``on_task_prerun`` and
``on_task_postrun`` (``taskfleet/observability/jobs.py``): a counter and a run-time
histogram, and the queue-wait histogram when the message carries a publish stamp. Both are
called here as Celery calls them, with a task object, in a fresh interpreter per mode
(prometheus-client picks its value class at import):

* **multiprocess**: ``PROMETHEUS_MULTIPROC_DIR`` set, values in memory-mapped files (how
  ``taskfleet up`` runs workers);
* **in-process**: no folder, values in the process's memory.

Each figure is the median of ``ROUNDS`` rounds of ``JOBS`` jobs, in microseconds per job
(prerun + postrun), over 4 job kinds.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace
from typing import Any

from bench.report import NOT_AVAILABLE, Table
from bench.workloads.base import Options, failure
from bench.workloads.features import fmt, summary, verdict

ROUNDS = 5
JOBS, QUICK_JOBS = 20_000, 5_000
KINDS = ("cpu.checksum", "io.wait", "contract.process", "made.up.kind")
TARGET_US = 20.0
CHILD_FLAG = "--child"


def _measure(jobs: int, stamped: bool) -> float:
    """Median µs per job of prerun + postrun in this interpreter."""
    from taskfleet.observability.jobs import on_task_postrun, on_task_prerun
    from taskfleet.routing.wire import SENT_AT_HEADER

    tasks = []
    for kind in KINDS:
        request = SimpleNamespace(**({SENT_AT_HEADER: time.time()} if stamped else {}))
        tasks.append(SimpleNamespace(name=kind, request=request))
    ids = [f"job-{i}" for i in range(jobs)]
    rounds = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for index, job_id in enumerate(ids):
            task = tasks[index & 3]
            on_task_prerun(task_id=job_id, task=task)
            on_task_postrun(task_id=job_id, task=task, state="SUCCESS")
        rounds.append((time.perf_counter() - start) / jobs * 1e6)
    return statistics.median(rounds)


def _child(jobs: int) -> None:
    print(json.dumps({"plain_us": _measure(jobs, False), "stamped_us": _measure(jobs, True)}))


def run(quick: bool = False) -> dict[str, Any]:
    """Per-job figures for both modes, each measured in its own interpreter."""
    jobs = QUICK_JOBS if quick else JOBS
    out: dict[str, Any] = {"jobs": jobs}
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as folder:
        for mode, extra in (("multiprocess", {"PROMETHEUS_MULTIPROC_DIR": folder}), ("memory", {})):
            env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
            argv = [sys.executable, "-m", "bench.workloads.w_metrics", CHILD_FLAG, str(jobs)]
            done = subprocess.run(argv, env=env | extra, capture_output=True, check=True, text=True)
            out[mode] = json.loads(done.stdout)
    return out


def table(options: Options) -> Table:
    """M1: µs per job the job metrics add, multiprocess and in-process."""
    n = QUICK_JOBS if options.quick else JOBS
    result = Table(
        "M1",
        f"job metrics per job ({n:,} jobs x {ROUNDS} rounds per run)",
        ["mode", "µs/job", "µs/job, stamped (queue wait too)", "target", "verdict"],
    )
    try:
        runs = [run(options.quick) for _ in range(options.runs)]
    except Exception as exc:
        result.rows.append(["M1", failure("M1", exc), *[NOT_AVAILABLE] * 3])
        return result
    for mode in ("multiprocess", "memory"):
        plain = summary(runs, f"{mode}.plain_us")
        stamped = summary(runs, f"{mode}.stamped_us")
        ok = verdict(stamped, lambda v: v < TARGET_US)
        result.rows.append([mode, fmt(plain, 2), fmt(stamped, 2), f"< {TARGET_US:.0f} µs", ok])
    result.notes.append(
        "prerun + postrun receivers as Celery calls them (counter, run-time histogram; "
        "queue-wait histogram when stamped), no Celery dispatch around them."
    )
    result.raw = runs
    return result


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == CHILD_FLAG:
        _child(int(sys.argv[2]))
    else:
        print(json.dumps(run(), indent=2))
