"""The job table (kind -> pool) is the data the client and router read: it cannot drift."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from celery import Celery

from taskfleet.app_config import make_router
from taskfleet.routing.topology import DEFAULT_INBOX, Topology
from taskfleet.tasks.base import TaskfleetTask, job
from taskfleet.tasks.table import DIAG_JOB_MODULES, JOB_MODULES, JOB_POOLS, PoolMismatch

PACKAGE_PREFIX = "taskfleet."
TOPOLOGY = Topology("cpu-q", "io-q", ".dlq", amqp=False)


def _declared() -> dict[str, tuple[str, str]]:
    """Every job the job modules declare: kind -> (pool, declaring module).

    Celery's own tasks and shared tasks of other apps in this process (a benchmark's stock
    ``@app.task``, which Celery adds to every app) are left out: they are not taskfleet jobs.
    """
    from taskfleet.tasks.job_app import app, job_modules

    for module in job_modules(diag_jobs=True):
        importlib.import_module(module)
    return {
        name: (task.pool, task.run.__module__)
        for name, task in app.tasks.items()
        if isinstance(task, TaskfleetTask) and task.run.__module__.startswith(PACKAGE_PREFIX)
    }


def test_the_table_is_what_the_job_modules_declare() -> None:
    """Same kinds, same pools: a job added, moved or removed must change the table too."""
    declared = _declared()
    assert {name: pool for name, (pool, _) in declared.items()} == dict(JOB_POOLS)


def test_every_job_module_declares_a_job_and_only_they_do() -> None:
    """Each listed module declares at least one job, and no other module declares one."""
    modules = {module for _, module in _declared().values()}
    assert modules == set(JOB_MODULES) | set(DIAG_JOB_MODULES)


def test_the_diagnostic_jobs_are_left_out_unless_turned_on() -> None:
    """``diag.*`` jobs fail or kill their worker on purpose: off by default (issue 19)."""
    from taskfleet.tasks.job_app import job_modules

    assert not set(DIAG_JOB_MODULES) & set(JOB_MODULES)
    assert job_modules(diag_jobs=False) == JOB_MODULES
    assert job_modules(diag_jobs=True) == JOB_MODULES + DIAG_JOB_MODULES


def test_a_shipped_kind_on_another_pool_is_refused() -> None:
    app = Celery("table-test", task_cls=TaskfleetTask, set_as_current=False)
    with pytest.raises(PoolMismatch, match=r"'cpu\.noop'.*'io'"):
        job(app, "cpu.noop", "io")


def test_a_kind_of_ones_own_is_declared_freely() -> None:
    app = Celery("table-test", task_cls=TaskfleetTask, set_as_current=False)

    @job(app, "t.own", "io")
    def own(payload: Any = None) -> Any:
        return payload

    assert app.tasks["t.own"].pool == "io"
    assert "t.own" not in JOB_POOLS


def test_the_router_reads_the_table_then_the_task() -> None:
    """A shipped kind by the table (no job imported); another by its task's pool."""
    route = make_router(TOPOLOGY)
    assert route("io.wait", (), {}, {}) == {"queue": "io-q"}
    assert route("sandbox.run", (), {}, {}) == {"queue": "cpu-q"}

    class Own:
        pool = "io"

    assert route("t.own", (), {}, {}, task=Own()) == {"queue": "io-q"}
    assert route("t.unknown", (), {}, {}) == {"queue": DEFAULT_INBOX}
