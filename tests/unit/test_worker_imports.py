"""A worker process imports what it runs: no HTTP client, no SQL toolkit until a job needs one.

Every worker imports every job module (``taskfleet.app``), so a module-level import in a job
module lands in every worker process, whatever its pool runs. Measured per process (RSS,
BENCHMARKS.md): SQLAlchemy 7.8 MiB, psycopg 10.4 MiB, httpx 3.8 MiB (with the rich and
pygments its own CLI brings). They are imported where they are used instead:

* ``httpx`` (and ``rich``, which httpx's own CLI brings in): by ``contract.notify`` when it
  delivers (``tasks/contract_jobs.py``) and by an alert evaluation (``alert_tasks.py``);
* ``sqlalchemy`` and ``psycopg``: by the result persister (a process of its own), when the
  process's engine is first used (``workers/resources.py``), and by the reuse cache's
  Postgres tier when a cacheable job first runs (``cache/reuse.py``).

A prefork worker's main process runs no job, but its pool processes share what it imported
before it forked: it imports SQLAlchemy and psycopg for them
(``signals.preload_for_pool_processes``), so they do not each import a copy.

The probe boots as a worker does, in a fresh interpreter: it imports the entry point (jobs
declared, hooks installed), configures the app, builds its result backend and broker
transport, and runs the ``worker_init`` handlers that open its pools.
"""

from __future__ import annotations

from typing import Any

from tests.support.probe import run_probe

#: Boots as a worker of the pool ``argv[1]`` names, after importing the modules ``argv[2:]``
#: name; prints the modules then loaded.
WORKER_BOOT_PROBE = """
import importlib, json, sys

for name in sys.argv[2:]:
    importlib.import_module(name)

import celery.apps.worker
from celery.concurrency import get_implementation

import taskfleet.app
from taskfleet.app import app
from taskfleet.workers import signals as lifecycle

app.finalize(auto=True)
app.conf.broker_url
app.backend
app.connection_for_read().transport

class Worker:
    pool_cls = get_implementation(sys.argv[1])
    concurrency = 1

Worker.app = app
lifecycle.open_solo_pools(sender=Worker())
lifecycle.record_before_inline_jobs(sender=Worker())
loaded = sorted(sys.modules)
lifecycle.close_resources()
print(json.dumps(loaded))
"""

#: Third-party packages a booted worker must not have loaded (top-level names).
NOT_AT_BOOT = ("httpx", "httpcore", "rich", "sqlalchemy", "psycopg")
#: taskfleet modules that import them, loaded by the job or process that uses them.
TASKFLEET_NOT_AT_BOOT = (
    "taskfleet.contracts.notify",
    "taskfleet.outbound",
    "taskfleet.observability.alert_notify",
    "taskfleet.observability.server",
    "taskfleet.observability.readiness",
    "taskfleet.cache.tiered",
    "taskfleet.cache.l3",
    "taskfleet.results.store",
)


def boot(pool: str, *first: str) -> set[str]:
    """The modules loaded by the boot of a ``pool`` worker (after importing ``first``)."""
    loaded: Any = run_probe(WORKER_BOOT_PROBE, pool, *first)
    return set(loaded)


def unwanted(loaded: set[str]) -> list[str]:
    """The packages of :data:`NOT_AT_BOOT` and the modules of :data:`TASKFLEET_NOT_AT_BOOT`
    in ``loaded``."""
    packages = {name.partition(".")[0] for name in loaded} & set(NOT_AT_BOOT)
    return sorted(packages | (loaded & set(TASKFLEET_NOT_AT_BOOT)))


def test_a_booted_solo_worker_has_no_http_client_and_no_sql_toolkit() -> None:
    loaded = boot("solo")

    assert "taskfleet.app" in loaded
    assert "taskfleet.tasks.contract_jobs" in loaded  # the job modules are declared
    assert "taskfleet.observability.alert_tasks" in loaded
    assert "taskfleet.workers.resources" in loaded  # and the pools were opened
    assert unwanted(loaded) == [], (
        "a worker's boot imports modules only some jobs or processes use; import them "
        "where they are used (tests/unit/test_worker_imports.py says where)"
    )


def test_a_prefork_worker_loads_the_sql_toolkit_its_pool_processes_share() -> None:
    """No HTTP client; SQLAlchemy and psycopg, imported once before the fork."""
    loaded = boot("prefork")

    assert unwanted(loaded) == [
        "psycopg",
        "sqlalchemy",
        "taskfleet.cache.l3",
        "taskfleet.cache.tiered",
        "taskfleet.results.store",
    ]


def test_the_probe_sees_a_module_imported_at_boot() -> None:
    """A module-level import of httpx or SQLAlchemy in what a worker boots is caught."""
    loaded = boot("solo", "taskfleet.contracts.notify", "taskfleet.results.store")

    assert {"httpx", "sqlalchemy", "taskfleet.contracts.notify"} <= set(unwanted(loaded))
