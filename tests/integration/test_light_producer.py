"""A producer is light: ``Client()`` loads no job, middleware, worker hook, SQLAlchemy, gevent
or Flower, and the persister reads its settings from ``config/`` without the app.

Each check runs in a fresh interpreter and reads its ``sys.modules``: the test process has
imported most of taskfleet already.
"""

from __future__ import annotations

import os

import pytest
import redis

from tests.support.probe import run_probe
from tests.support.services import on_db

#: A Redis database no other test uses: the probe's one job lands there and is flushed.
PROBE_DB = 11

#: Modules a producer must not load (a name stands for the module and its submodules).
HEAVY = (
    "taskfleet.app",
    "taskfleet.tasks.builtin",
    "taskfleet.tasks.contract_jobs",
    "taskfleet.tasks.sandbox_jobs",
    "taskfleet.tasks.job_app",
    "taskfleet.resilience.testing_jobs",
    "taskfleet.scheduler.tasks",
    "taskfleet.cache.reuse",
    "taskfleet.resilience.middleware",
    "taskfleet.resilience.consumer",
    "taskfleet.workers.signals",
    "taskfleet.workers.hooks",
    "taskfleet.workers.inline_limits",
    "taskfleet.workers.prefetch",
    "taskfleet.workers.timers",
    "sqlalchemy",
    "gevent",
    "flower",
)

CLIENT_PROBE = """
import json, sys
import taskfleet.client
from taskfleet.client import Client

client = Client()
handle = client.enqueue("cpu.noop", {})
client.close()
print(json.dumps({"job": handle.id, "modules": sorted(sys.modules)}))
"""

PERSISTER_PROBE = """
import json, sys
import taskfleet.results.persister
print(json.dumps({"modules": sorted(sys.modules)}))
"""


def _loaded(modules: list[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(f"{h}.") for h in HEAVY))


@pytest.fixture
def probe_env(services: dict[str, str]) -> dict[str, str]:
    """The test services, with broker and results on a Redis database of the probe's own."""
    url = on_db(services["TASKFLEET_REDIS_URL"], PROBE_DB)
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield {**services, "TASKFLEET_BROKER_URL": url, "TASKFLEET_REDIS_URL": url}
    client.flushdb()
    client.close()


def test_client_loads_no_job_middleware_hook_or_heavy_library(
    probe_env: dict[str, str],
) -> None:
    """Import the client, build ``Client()``, enqueue a job: none of ``HEAVY`` is loaded."""
    found = run_probe(CLIENT_PROBE, env={**os.environ, **probe_env})
    modules = found["modules"]
    assert isinstance(modules, list)
    assert "taskfleet.client" in modules
    assert "taskfleet.tasks.table" in modules  # the kinds come from the job table
    assert _loaded(modules) == []
    queued = redis.Redis.from_url(probe_env["TASKFLEET_BROKER_URL"]).dbsize()
    assert queued > 0, "the probe's job was not published"


def test_persister_reads_its_settings_without_the_app(probe_env: dict[str, str]) -> None:
    """The persister loads SQLAlchemy (it writes Postgres) but no app, job or worker hook."""
    found = run_probe(PERSISTER_PROBE, env={**os.environ, **probe_env})
    modules = found["modules"]
    assert isinstance(modules, list)
    assert [m for m in _loaded(modules) if not m.startswith("sqlalchemy")] == []
