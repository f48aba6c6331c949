"""``TASKFLEET_FAST_TRANSPORT=false``: workers on stock kombu's Redis transport, end to end.

The setting must reach the worker's own broker connection (not just the app's config), jobs
must run and be acked on both pools, and a dead worker's deliveries must come back without
the fast path's owner tags: by kombu's visibility-timeout restore. These fleets set the
switch themselves, so they run in both passes of ``make test``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from taskfleet.client import Client
from taskfleet.config import load_settings
from taskfleet.resilience.testing_jobs import record_log_key, record_release_key
from taskfleet.routing.stock_transport import STOCK_TRANSPORT_PATH
from taskfleet.workers.profiles import cpu_profile, io_profile
from tests.support.waiting import wait_for
from tests.support.workers import DIAG_JOBS_ENV, Fleet, kill_tree

#: Short enough for a test to outwait, above the hard limit (the settings require it).
VISIBILITY_S = 6
SOFT_LIMIT_S = 3
HARD_LIMIT_S = 4
JOBS = 60
PREFORK_PROCESSES = 2
#: A killed prefork worker of two processes holds two running jobs and a spare.
HELD_BY_PREFORK = PREFORK_PROCESSES + 1
HOLD_MS = 60_000
RESULT_TIMEOUT_S = 60.0
SETTLE_S = 30.0
STATS_TIMEOUT_S = 2.0
#: kombu restores on a new worker's first poll, then every ~100 s: well inside this.
RESTORE_DEADLINE_S = 90.0


@pytest.fixture
def stock_env(redis_env: dict[str, str]) -> dict[str, str]:
    """Queues of their own, the stock transport and a visibility timeout a test can outwait."""
    suffix = uuid.uuid4().hex[:6]
    return {
        **redis_env,
        **DIAG_JOBS_ENV,  # diag.record holds the jobs the kill strands
        "TASKFLEET_FAST_TRANSPORT": "false",
        "TASKFLEET_CPU_POOL": "prefork",  # a prefork worker of PREFORK_PROCESSES
        "TASKFLEET_CPU_QUEUE": f"cpu-stock-{suffix}",
        "TASKFLEET_IO_QUEUE": f"io-stock-{suffix}",
        "TASKFLEET_VISIBILITY_TIMEOUT": str(VISIBILITY_S),
        "TASKFLEET_SOFT_TIME_LIMIT": str(SOFT_LIMIT_S),
        "TASKFLEET_HARD_TIME_LIMIT": str(HARD_LIMIT_S),
        "TASKFLEET_NO_PERSISTER": "1",
    }


@pytest.fixture
def fleets() -> Iterator[list[Fleet]]:
    """Fleets a test starts; all stopped at its end."""
    started: list[Fleet] = []
    yield started
    for fleet in started:
        fleet.stop()


def _unacked_of(client: redis.Redis, queue: str) -> list[bytes]:
    return [r for r in client.hvals("unacked") if queue.encode() in r]


def _broker_transport(fleet: Fleet, pid: int) -> str | None:
    """The transport class of the broker connection of the worker whose main process is
    ``pid`` (other tests' workers on the same broker answer the broadcast too)."""
    stats = fleet.app().control.inspect(timeout=STATS_TIMEOUT_S).stats() or {}
    return next((s["broker"]["transport"] for s in stats.values() if s["pid"] == pid), None)


def test_workers_on_stock_kombus_transport_run_every_job_and_lose_none_to_a_kill(
    stock_env: dict[str, str], redis_client: redis.Redis, fleets: list[Fleet], tmp_path: Path
) -> None:
    """The switch reaches each worker's own connection; jobs run to their acks on both
    pools; a killed worker's jobs come back without owner tags or a sidecar, by kombu's own
    visibility-timeout restore."""
    fleet = Fleet(stock_env, tmp_path)
    fleets.append(fleet)
    settings = load_settings(**fleet.settings_overrides)
    fleet.start_all(
        [(cpu_profile(settings, PREFORK_PROCESSES), "first"), (io_profile(settings, 5), "io")]
    )
    for proc in fleet.procs.values():
        transport = wait_for(
            lambda pid=proc.pid: _broker_transport(fleet, pid), SETTLE_S, "worker stats"
        )
        assert transport == STOCK_TRANSPORT_PATH
        children = psutil.Process(proc.pid).children(recursive=True)
        assert not [p for p in children if "taskfleet.sidecar" in p.cmdline()]  # no owner tags

    client = Client(fleet.app())
    try:
        handles = [client.enqueue("cpu.checksum", {"rounds": 1 + i % 5}) for i in range(JOBS)]
        handles += [client.enqueue("io.wait", {"ms": i % 20}) for i in range(JOBS)]
        results = [h.result(RESULT_TIMEOUT_S) for h in handles]
        assert all(len(r["sha256"]) == 64 for r in results[:JOBS])
        assert all(r["waited_ms"] >= 0 for r in results[JOBS:])
        for queue in (stock_env["TASKFLEET_CPU_QUEUE"], stock_env["TASKFLEET_IO_QUEUE"]):
            wait_for(lambda q=queue: not _unacked_of(redis_client, q), SETTLE_S, f"{queue} acked")
        _kill_and_restore(fleet, client, redis_client, stock_env["TASKFLEET_CPU_QUEUE"])
    finally:
        client.close()


def _kill_and_restore(fleet: Fleet, client: Client, redis_client: redis.Redis, queue: str) -> None:
    """Kill the CPU worker holding jobs; a new one runs them once they are past the
    visibility timeout, and none is lost."""
    log = uuid.uuid4().hex

    def starts() -> set[str]:
        entries = [json.loads(e) for e in redis_client.lrange(record_log_key(log), 0, -1)]
        return {e["id"] for e in entries if e["phase"] == "start"}

    handles = [
        client.enqueue("diag.record", {"log": log, "ms": HOLD_MS}) for _ in range(HELD_BY_PREFORK)
    ]
    wait_for(
        lambda: (
            len(starts()) == PREFORK_PROCESSES
            and len(_unacked_of(redis_client, queue)) == HELD_BY_PREFORK
        ),
        SETTLE_S,
        "two jobs running and a spare reserved, each recorded as unacked",
    )
    kill_tree(fleet.procs["first"].pid)
    held = [t for t, r in redis_client.hgetall("unacked").items() if queue.encode() in r]
    newest = max(float(s) for s in redis_client.zmscore("unacked_index", held) if s)

    def past_visibility() -> bool:
        return time.time() - newest > VISIBILITY_S

    wait_for(past_visibility, 2 * VISIBILITY_S, "the held deliveries to become visible")
    redis_client.set(record_release_key(log), 1)
    settings = load_settings(**fleet.settings_overrides)
    fleet.start(cpu_profile(settings, PREFORK_PROCESSES), "second")
    results: list[Any] = [h.result(RESTORE_DEADLINE_S) for h in handles]
    assert len(results) == HELD_BY_PREFORK
    assert starts() == {h.id for h in handles}  # nothing lost
    wait_for(lambda: not _unacked_of(redis_client, queue), SETTLE_S, "every delivery acked")
