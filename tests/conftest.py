"""Shared fixtures: real services, per-test clean state, worker fleets on Redis and RabbitMQ."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import text

from taskfleet.config.settings import load_settings
from taskfleet.results.store import ensure_schema, make_engine
from taskfleet.routing.depth import redis_priority_keys

from .support import vm
from .support.services import amqp_url, delete_amqp_queues, missing_service, reachable, service_env
from .support.workers import SESSION_FLEET_STOP_TIMEOUT_S, Fleet, running_fleet


@pytest.fixture(scope="session")
def services(session_services: dict[str, str]) -> dict[str, str]:
    """Redis and Postgres URLs (configured or embedded), exported for this process too."""
    return session_services


@pytest.fixture(scope="session")
def session_services() -> Iterator[dict[str, str]]:
    """What :func:`services` gives, under a name no test module overrides (the unit tests'
    session asks for it; ``test_compose`` has a ``services`` of its own).

    An embedded stack this session started is stopped at its end (its data is kept).
    """
    env, started = service_env()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from taskfleet.config.settings import get_settings

    get_settings.cache_clear()
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    get_settings.cache_clear()
    if started is not None:
        started.stop()


@pytest.fixture(scope="session")
def redis_client(services: dict[str, str]) -> redis.Redis:
    """A client on the test Redis."""
    return redis.Redis.from_url(services["TASKFLEET_REDIS_URL"])


@pytest.fixture(scope="session")
def engine(services: dict[str, str]):  # type: ignore[no-untyped-def]
    """An engine on the test Postgres, with the results table in place."""
    eng = make_engine(services["TASKFLEET_DATABASE_URL"])
    ensure_schema(eng)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def queue_suffix() -> str:
    """Queue names unique to this test session, so parallel or leftover runs never collide."""
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def redis_env(services: dict[str, str], queue_suffix: str) -> dict[str, str]:
    """Environment for a fleet on the Redis broker."""
    return {
        **services,
        "TASKFLEET_CPU_QUEUE": f"cpu-{queue_suffix}",
        "TASKFLEET_IO_QUEUE": f"io-{queue_suffix}",
    }


@pytest.fixture(scope="session")
def amqp_env(services: dict[str, str], queue_suffix: str) -> dict[str, str]:
    """Environment for a fleet on RabbitMQ (results still in Redis and Postgres)."""
    url = amqp_url()
    if not reachable(url):
        missing_service(f"RabbitMQ at {url}")
    return {
        **services,
        "TASKFLEET_BROKER_URL": url,
        "TASKFLEET_CPU_QUEUE": f"cpu-amqp-{queue_suffix}",
        "TASKFLEET_IO_QUEUE": f"io-amqp-{queue_suffix}",
    }


@pytest.fixture(scope="session")
def redis_fleet(
    redis_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    """A CPU (prefork) and an I/O (gevent) worker on the Redis broker, for the whole session."""
    log_dir = tmp_path_factory.mktemp("redis-fleet")
    with running_fleet(redis_env, log_dir, stop_timeout_s=SESSION_FLEET_STOP_TIMEOUT_S) as fleet:
        yield fleet


@pytest.fixture(scope="session")
def amqp_fleet(
    amqp_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    """The same fleet on RabbitMQ."""
    log_dir = tmp_path_factory.mktemp("amqp-fleet")
    try:
        with running_fleet(amqp_env, log_dir, stop_timeout_s=SESSION_FLEET_STOP_TIMEOUT_S) as fleet:
            yield fleet
    finally:
        delete_amqp_queues(amqp_env)


@pytest.fixture
def clean_state(redis_client: redis.Redis, engine, redis_env: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """Flush results, buffers and the session's queues before a test (worker bindings stay)."""

    def flush() -> None:
        keys: list[bytes] = []
        for pattern in ("celery-task-meta-*", "taskfleet:idem:*"):
            keys.extend(redis_client.scan_iter(pattern, count=1000))
        for base in (redis_env["TASKFLEET_CPU_QUEUE"], redis_env["TASKFLEET_IO_QUEUE"]):
            keys.extend(k.encode() for k in redis_priority_keys(base))
        if keys:
            for start in range(0, len(keys), 1000):
                redis_client.delete(*keys[start : start + 1000])
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE taskfleet_results"))

    flush()


#: Why a ``fast_transport`` test is skipped when the workers run stock kombu's transport.
STOCK_TRANSPORT_SKIP = (
    "TASKFLEET_FAST_TRANSPORT=false: the workers run stock kombu's Redis transport, which has "
    "no such fast path (README, 'TASKFLEET_FAST_TRANSPORT')"
)


#: The timeout of an integration or reliability test that declares none, or a shorter one.
SLOW_TIMEOUT_S = 240


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Integration and reliability tests get a longer default timeout (a module that declares
    a longer one keeps it: the cgroup v2 VM's); tests that restart a
    shared service (``disruptive``) run last, so no session-wide fleet meets the restart.
    With ``TASKFLEET_FAST_TRANSPORT=false`` the tests of the fast transport's own paths
    (``fast_transport``) are skipped; every other test runs against the stock transport."""
    fast = load_settings().fast_transport
    for item in items:
        path = Path(str(item.fspath))
        declared = item.get_closest_marker("timeout")
        longer = declared is not None and declared.args and declared.args[0] > SLOW_TIMEOUT_S
        if ("integration" in path.parts or "reliability" in path.parts) and not longer:
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S), append=False)
        marker = item.get_closest_marker("fast_transport")
        if not fast and marker is not None:
            why = marker.kwargs.get("reason")
            reason = STOCK_TRANSPORT_SKIP if why is None else f"{STOCK_TRANSPORT_SKIP}: {why}"
            item.add_marker(pytest.mark.skip(reason=reason))
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)
    _start_the_vm_early(config, items)


#: The cgroup v2 VM (tests/support/vm.py) started at collection, if a selected test needs it.
EARLY_VM = pytest.StashKey["vm.VmRun"]()
VM_TEST_MODULE = "test_sandbox_cgroup_vm.py"
#: QEMU's niceness: it boots and runs its cases on CPU the other tests leave idle.
EARLY_VM_NICE = 19


def _start_the_vm_early(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Boot the VM of the cgroup v2 tests now, in the background and niced, and run those
    tests last: by then it has finished (about 25 CPU-seconds under emulation), instead of
    adding its time to the run's."""
    selected = [item for item in items if Path(str(item.fspath)).name == VM_TEST_MODULE]
    if not selected or vm.missing():
        return
    items[:] = [item for item in items if item not in selected] + selected
    work = Path(tempfile.mkdtemp(prefix="taskfleet-vm-"))
    config.stash[EARLY_VM] = vm.start_sandbox_cases(work, nice=EARLY_VM_NICE)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the early VM if no test waited for it (an interrupted or deselected run)."""
    run = config.stash.get(EARLY_VM, None)
    if run is not None:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.communicate()
        shutil.rmtree(run.share.parent, ignore_errors=True)
