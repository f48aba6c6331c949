"""The job table: every shipped job kind and the pool that runs it, as data.

The client and the app's router read this table to route a kind to its pool's queue; neither
imports a job body for it, so a producer stays light (``taskfleet.client`` loads no job
module, middleware or worker hook). ``taskfleet.tasks.base.job`` refuses a declaration whose
pool disagrees with the table, and ``tests/unit/test_job_table.py`` checks that the table
and the job modules (:data:`JOB_MODULES`, :data:`DIAG_JOB_MODULES`) declare the same kinds, so the two cannot drift.

A kind not in the table (a test's own app, a benchmark's) can still be declared with
``job``; the router then routes it by its task's pool.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from taskfleet.routing.topology import Pool

#: Modules that declare the shipped jobs, in the order the worker's app imports them.
JOB_MODULES: Final[tuple[str, ...]] = (
    "taskfleet.tasks.builtin",
    "taskfleet.tasks.contract_jobs",
    "taskfleet.tasks.sandbox_jobs",
    "taskfleet.scheduler.tasks",
    "taskfleet.observability.alert_tasks",
    "taskfleet.routing.sweep_tasks",
)
#: Modules of jobs that fail, hold or kill their worker on purpose (``diag.*``): imported
#: after :data:`JOB_MODULES` only when ``TASKFLEET_DIAG_JOBS`` is true (tests, chaos runs).
#: Their kinds stay in :data:`JOB_POOLS`, so a producer routes them; a worker without them
#: dead-letters such a message as an unknown task.
DIAG_JOB_MODULES: Final[tuple[str, ...]] = (
    "taskfleet.resilience.testing_jobs",
    "taskfleet.ratelimit.testing_jobs",
)

CPU: Final[Pool] = "cpu"
IO: Final[Pool] = "io"

#: Job kind -> the pool that runs it, one block per job module above.
JOB_POOLS: Final[Mapping[str, Pool]] = MappingProxyType(
    {
        # taskfleet.tasks.builtin
        "cpu.noop": CPU,
        "io.noop": IO,
        "cpu.checksum": CPU,
        "io.wait": IO,
        # taskfleet.tasks.contract_jobs
        "contract.validate": CPU,
        "contract.normalise": CPU,
        "contract.fingerprint": CPU,
        "contract.evaluate": CPU,
        "contract.summarise": CPU,
        "contract.process": CPU,
        "contract.gather": CPU,
        "contract.notify": IO,
        # taskfleet.resilience.testing_jobs (DIAG_JOB_MODULES)
        "diag.always_fails": CPU,
        "diag.flaky": CPU,
        "diag.slow_retry": CPU,
        "diag.wrong_error": CPU,
        "diag.echo": CPU,
        "diag.dependency": CPU,
        "diag.guarded": CPU,
        "diag.suicide": CPU,
        "diag.gate": CPU,
        "diag.record": CPU,
        "diag.record_io": IO,
        # taskfleet.ratelimit.testing_jobs
        "diag.limited": CPU,
        "diag.sender": CPU,
        # taskfleet.tasks.sandbox_jobs
        "sandbox.run": CPU,
        # taskfleet.scheduler.tasks (TICK_TASK)
        "scheduler.autoscale_tick": IO,
        # taskfleet.observability.alert_tasks (ALERT_TASK)
        "observability.alert_tick": IO,
        # taskfleet.routing.sweep_tasks (GROUP_SWEEP_TASK)
        "routing.group_sweep": IO,
    }
)


class PoolMismatch(ValueError):
    """A job declared on another pool than the job table gives its kind."""


def check_declared(kind: str, pool: Pool) -> None:
    """Refuse a declaration of a shipped kind on another pool than the table's.

    Raises:
        PoolMismatch: ``kind`` is in :data:`JOB_POOLS` with another pool.
    """
    listed = JOB_POOLS.get(kind)
    if listed is not None and listed != pool:
        raise PoolMismatch(
            f"job {kind!r} declared on pool {pool!r}, but the job table "
            f"(taskfleet/tasks/table.py) runs it on {listed!r}"
        )
