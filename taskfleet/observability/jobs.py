"""Job metrics recorded in the worker: jobs by kind and state, run time and queue wait.

Multiprocess mode, not a collector reading Redis. A prefork worker runs jobs in several
child processes, each with its own memory; prometheus-client's multiprocess mode gives each
process its own memory-mapped file under ``PROMETHEUS_MULTIPROC_DIR`` (one per pid; the
value class notices a fork and starts a new file), and the host's one endpoint sums the
files at scrape time. A ``solo`` worker is one process and a ``gevent`` worker one process
with many greenlets: both write one file, and a greenlet switch cannot split an update (the
writes take a lock and never yield). Recording costs a few microseconds of memory writes
per job, with no network round trip; keeping the same counters in Redis would cost one
per job (or a flushing thread per process). Counters and histograms of a process that
exited stay in its file, which is what a counter needs (its total must not drop); only
live gauges are per-process, and :func:`mark_child_dead` drops those when a pool child
exits. ``taskfleet up`` empties the folder before it starts the workers.

Without ``PROMETHEUS_MULTIPROC_DIR`` in the worker's environment the values live in the
worker's memory and no endpoint sees them (the README says how to set it).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client import Counter, Histogram

from taskfleet.observability.labels import kind_label, state_label
from taskfleet.routing.wire import SENT_AT_HEADER

#: The variable prometheus-client reads its multiprocess folder from.
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
#: Run time buckets (seconds): from a no-op job to a long sandbox run.
RUN_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
#: Queue wait buckets (seconds): from an idle fleet to a long backlog.
WAIT_BUCKETS: Final = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


@dataclass
class JobMetrics:
    """The job metrics of one process, with their labelled children cached per key."""

    jobs: Counter = field(
        default_factory=lambda: Counter(
            "taskfleet_jobs", "Jobs finished, by kind and state", ["kind", "state"], registry=None
        )
    )
    run: Histogram = field(
        default_factory=lambda: Histogram(
            "taskfleet_job_run_seconds",
            "Time a job's code ran, by kind",
            ["kind"],
            buckets=RUN_BUCKETS,
            registry=None,
        )
    )
    wait: Histogram = field(
        default_factory=lambda: Histogram(
            "taskfleet_job_queue_wait_seconds",
            "Time from publish to start, by kind (jobs whose message carries the stamp)",
            ["kind"],
            buckets=WAIT_BUCKETS,
            registry=None,
        )
    )
    _children: dict[tuple[int | str, ...], Any] = field(default_factory=dict)

    def child(self, metric: Counter | Histogram, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once per process."""
        key: tuple[int | str, ...] = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def started(self, kind: str, sent_at: Any, now: float) -> None:
        """A job of ``kind`` starts at ``now`` (wall clock); record its wait if stamped."""
        if isinstance(sent_at, int | float) and not isinstance(sent_at, bool):
            self.child(self.wait, kind).observe(max(0.0, now - float(sent_at)))

    def finished(self, kind: str, state: str, ran_s: float | None) -> None:
        """A job of ``kind`` ended in ``state`` after running ``ran_s`` seconds."""
        self.child(self.jobs, kind, state).inc()
        if ran_s is not None:
            self.child(self.run, kind).observe(ran_s)


#: Most jobs a process can have between prerun and postrun before :data:`_started` is
#: cleared (a job killed without a postrun, e.g. a greenlet killed at its hard limit, would
#: otherwise stay): far above any pool's concurrency.
STARTED_CAP: Final = 10_000

_metrics: JobMetrics | None = None
#: Task id -> when its job started (monotonic), between prerun and postrun.
_started: dict[str, float] = {}


def job_metrics() -> JobMetrics:
    """This process's job metrics (built on first use, never at import)."""
    global _metrics
    if _metrics is None:
        folder = os.environ.get(MULTIPROC_ENV)
        if folder:  # prometheus-client writes there but does not create it
            os.makedirs(folder, exist_ok=True)
        _metrics = JobMetrics()
    return _metrics


def on_task_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    """``task_prerun``: note the start, and the queue wait of a stamped message."""
    if task_id is None or task is None:
        return
    if len(_started) >= STARTED_CAP:
        _started.clear()  # those jobs' run times are lost; their counts are not
    _started[task_id] = time.monotonic()
    sent_at = getattr(task.request, SENT_AT_HEADER, None)
    if sent_at is not None:
        job_metrics().started(kind_label(task.name), sent_at, time.time())


def on_task_postrun(
    task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any
) -> None:
    """``task_postrun``: count the job by kind and state, and its run time."""
    began = _started.pop(task_id, None) if task_id is not None else None
    ran = None if began is None else time.monotonic() - began
    job_metrics().finished(kind_label(getattr(task, "name", None)), state_label(state), ran)


def mark_child_dead(pid: int | None = None, **_: Any) -> None:
    """``worker_process_shutdown``: drop this pool process's live gauges from the folder."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
