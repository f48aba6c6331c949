"""The result persister process imports what it persists with: Redis, SQLAlchemy, psycopg.

Every CPU worker host runs one persister (``python -m taskfleet.results.persister``, or
``taskfleet.sharding.service`` when ``TASKFLEET_DATABASE_URLS`` is set), and its memory
counts with the worker's. It once loaded Celery and kombu it never uses, through two imports:

* ``taskfleet.workers`` (the package of ``persister_watch`` and ``resources``) re-exported the
  worker profiles at import, and they import the routing topology, hence kombu, amqp,
  billiard, vine and PyYAML: the package now imports them on first use of a name;
* ``taskfleet.workers.capacity`` (for ``resources``' Redis pool cap) imported ``Celery`` for
  a type annotation, hence Celery's app (click, dateutil, tzlocal, greenlet): now only for
  the type checker.

Measured (RSS at idle, median of 3 starts): 81.8 MiB before, 74.1 MiB after.

The probe runs the persister's entry point in a fresh interpreter up to its main loop:
settings read, pools and engine built, the persister constructed, the heap settled. It
connects to nothing (the URLs point at closed ports), so it needs no service. The sharded
entry point opens its cluster (a query to the catalog) before its loop: it is only imported.
"""

from __future__ import annotations

import os
from typing import Any

from tests.support.probe import run_probe

#: Runs ``taskfleet.results.persister.run_forever`` up to its loop (``serve``, which the
#: probe replaces), after importing the modules ``argv[1:]`` name; prints the modules loaded.
PERSISTER_PROBE = """
import importlib, json, sys

for name in sys.argv[1:]:
    importlib.import_module(name)

import taskfleet.results.persister as entry

built = []

def serve(persister, parent_pid, name):
    built.append(type(persister).__name__)
    print(json.dumps(sorted(sys.modules)))

entry.serve = serve
entry.run_forever(None)
assert built == ["ResultPersister"], built
"""

#: Imports the sharded persister's entry point; prints the modules loaded.
SHARDED_PROBE = """
import json, sys

import taskfleet.sharding.service

print(json.dumps(sorted(sys.modules)))
"""

#: Closed ports: building the persister must not connect (the probe would fail if it did).
PROBE_ENV = {
    "TASKFLEET_BROKER_URL": "redis://127.0.0.1:1/0",
    "TASKFLEET_REDIS_URL": "redis://127.0.0.1:1/0",
    "TASKFLEET_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/none",
    "TASKFLEET_EMBEDDED": "false",
}

#: Third-party packages the persister does not use (top-level names).
NOT_IN_PERSISTER = (
    "amqp",
    "billiard",
    "celery",
    "click",
    "dateutil",
    "greenlet",
    "kombu",
    "tzlocal",
    "vine",
    "yaml",
)
#: taskfleet modules that import them, loaded by workers only.
TASKFLEET_NOT_IN_PERSISTER = (
    "taskfleet.app",
    "taskfleet.routing",
    "taskfleet.routing.topology",
    "taskfleet.workers.profiles",
    "taskfleet.workers.signals",
)


def probe(source: str, *first: str) -> set[str]:
    """The modules ``source`` reports loaded (after importing ``first``)."""
    env = {k: v for k, v in os.environ.items() if k != "TASKFLEET_DATABASE_URLS"}
    loaded: Any = run_probe(source, *first, env={**env, **PROBE_ENV})
    return set(loaded)


def unwanted(loaded: set[str]) -> list[str]:
    """The packages of :data:`NOT_IN_PERSISTER` and the modules of
    :data:`TASKFLEET_NOT_IN_PERSISTER` in ``loaded``."""
    packages = {name.partition(".")[0] for name in loaded} & set(NOT_IN_PERSISTER)
    return sorted(packages | (loaded & set(TASKFLEET_NOT_IN_PERSISTER)))


def test_a_built_persister_has_loaded_neither_celery_nor_kombu() -> None:
    loaded = probe(PERSISTER_PROBE)

    assert {"redis", "sqlalchemy", "psycopg", "tenacity"} <= loaded  # what it persists with
    assert "taskfleet.workers.resources" in loaded  # its pools were opened
    assert "taskfleet.workers.persister_watch" in loaded  # and its heartbeat imported
    assert unwanted(loaded) == [], (
        "the result persister imports modules only workers use; import them where they are "
        "used (tests/unit/test_persister_imports.py says which)"
    )


def test_the_sharded_persister_has_loaded_neither_celery_nor_kombu() -> None:
    loaded = probe(SHARDED_PROBE)

    assert {"redis", "sqlalchemy", "taskfleet.sharding.persister"} <= loaded
    assert unwanted(loaded) == []


def test_the_probe_sees_a_worker_module_imported_first() -> None:
    """A module-level import of the worker profiles in what the persister imports is caught."""
    loaded = probe(PERSISTER_PROBE, "taskfleet.workers.profiles")

    assert {"kombu", "taskfleet.workers.profiles"} <= set(unwanted(loaded))
