"""The autoscaler against a real prefork worker on the Redis broker."""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from typer.testing import CliRunner

from taskfleet.client import Client
from taskfleet.config.autoscale import AutoscaleSettings, load_autoscale_settings
from taskfleet.config.settings import DEFAULT_SPARE_PREFETCH
from taskfleet.routing.depth import redis_queue_depths
from taskfleet.scheduler.actuate import resize_worker
from taskfleet.scheduler.cli import scale_cli
from taskfleet.scheduler.measure import inspect_workers
from taskfleet.scheduler.model import WorkerView
from taskfleet.scheduler.store import KEY_PREFIX, AutoscaleStore
from taskfleet.scheduler.tick import run_tick
from tests.support.waiting import wait_for
from tests.support.workers import Fleet, running_fleet

BURST_JOBS = 2000
CHECKSUM_ROUNDS = 2000
MIN, MAX = 1, 4
INTERVAL_S = 1.0
DOWN_COOLDOWN_S = 3.0


def _settings(**overrides: Any) -> AutoscaleSettings:
    values: dict[str, Any] = {
        "interval": INTERVAL_S,
        "inspect_timeout": 0.5,
        "up_cooldown": INTERVAL_S,
        "down_cooldown": DOWN_COOLDOWN_S,
        "cpu_worker_min": MIN,
        "cpu_worker_max": MAX,
        "cpu_pool_min": MIN,
        "cpu_pool_max": MAX,
        "cpu_step_up": MAX,
        "cpu_step_down": MAX,
    }
    return load_autoscale_settings(**(values | overrides))


@pytest.fixture(scope="module")
def scaled_fleet(
    redis_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    """One prefork worker started at the minimum, on queues of its own."""
    suffix = uuid.uuid4().hex[:6]
    env = {
        **redis_env,
        "TASKFLEET_CPU_QUEUE": f"cpu-as-{suffix}",
        "TASKFLEET_IO_QUEUE": f"io-as-{suffix}",
    }
    with running_fleet(env, tmp_path_factory.mktemp("autoscale"), cpu=MIN, pools=("cpu",)) as fleet:
        yield fleet


@pytest.fixture
def app(scaled_fleet: Fleet, redis_client: redis.Redis) -> Iterator[Celery]:
    """An app like the worker's, with the autoscaler's Redis keys cleared."""
    for key in redis_client.scan_iter(f"{KEY_PREFIX}*"):
        redis_client.delete(key)
    celery_app = scaled_fleet.app()
    yield celery_app
    celery_app.close()


def _cpu_processes(app: Celery, fleet: Fleet) -> int:
    """Pool processes the worker really runs (from its own ``stats``)."""
    queue = fleet.env["TASKFLEET_CPU_QUEUE"]
    return sum(
        len(r.stats["pool"]["processes"]) for r in inspect_workers(app, 0.5) if queue in r.queues
    )


def _prefetch_and_processes(app: Celery, fleet: Fleet) -> tuple[int, int]:
    """The worker's reserved-job limit and its pool processes (from its own ``stats``)."""
    queue = fleet.env["TASKFLEET_CPU_QUEUE"]
    (reply,) = [r for r in inspect_workers(app, 0.5) if queue in r.queues]
    return int(reply.stats["prefetch_count"]), len(reply.stats["pool"]["processes"])


def test_the_worker_reserves_one_spare_job_not_one_per_process(
    app: Celery, scaled_fleet: Fleet
) -> None:
    prefetch, processes = _prefetch_and_processes(app, scaled_fleet)
    assert prefetch == processes + DEFAULT_SPARE_PREFETCH


def _decided_tick(app: Celery, settings: AutoscaleSettings, client: redis.Redis) -> dict[str, Any]:
    """Run ticks until one decides (the gate refuses one less than a tick after the last)."""
    return wait_for(
        lambda: (e := run_tick(app, settings, client))["status"] == "decided" and e,
        10 * INTERVAL_S,
        "a tick that decides",
        interval=0.1,
    )


@pytest.mark.timeout(120)
def test_burst_grows_to_max_within_two_ticks_and_returns_to_min_after_cooldown(
    app: Celery, scaled_fleet: Fleet, redis_client: redis.Redis
) -> None:
    settings = _settings()
    queue = scaled_fleet.env["TASKFLEET_CPU_QUEUE"]
    first = _decided_tick(app, settings, redis_client)
    assert first["pools"]["cpu"]["decision"]["target"] == MIN, first["pools"]
    client = Client(app)
    try:
        client.enqueue_many(
            [("cpu.checksum", {"rounds": CHECKSUM_ROUNDS, "i": i}) for i in range(BURST_JOBS)]
        )
    finally:
        client.close()
    targets = []
    for _ in range(2):
        entry = _decided_tick(app, settings, redis_client)
        cpu = entry["pools"]["cpu"]
        targets.append(cpu["decision"]["target"])
        if cpu["decision"]["target"] == MAX:
            assert cpu["inputs"]["depth"] > 0
            assert all(r["outcome"] == "ok" for r in cpu["result"].values()), cpu
            break
    assert targets[-1] == MAX, targets
    wait_for(lambda: _cpu_processes(app, scaled_fleet) == MAX, 15, f"{MAX} pool processes")
    assert redis_queue_depths(redis_client, [queue])[queue] > 0, "burst drained too fast to observe"
    # Growing keeps the spare: one reserved job per process plus one per worker.
    wait_for(
        lambda: _prefetch_and_processes(app, scaled_fleet) == (MAX + DEFAULT_SPARE_PREFETCH, MAX),
        15,
        "the prefetch count to follow the growth",
    )

    wait_for(
        lambda: redis_queue_depths(redis_client, [queue])[queue] == 0, 90, "the burst to drain"
    )
    drained_at = time.time()
    last = wait_for(
        lambda: (
            (e := _decided_tick(app, settings, redis_client))["pools"]["cpu"]["decision"]["target"]
            == MIN
            and e
        ),
        30,
        "concurrency back to the minimum",
    )
    assert last["pools"]["cpu"]["decision"]["action"] == "shrink"
    history = AutoscaleStore(redis_client, INTERVAL_S).history(100)
    grown_at = max(e["at"] for e in history if e["pools"]["cpu"]["decision"]["action"] == "grow")
    assert last["at"] - grown_at >= DOWN_COOLDOWN_S  # not before the cooldown
    assert last["at"] - drained_at < DOWN_COOLDOWN_S + 10 * INTERVAL_S
    shrinks = [e["pools"]["cpu"]["result"] for e in history if e["pools"]["cpu"]["result"]]
    assert shrinks
    # The worker really runs MIN processes again (billiard reaps within its 5 s maintenance).
    wait_for(lambda: _cpu_processes(app, scaled_fleet) == MIN, 20, f"{MIN} pool process(es)")


@pytest.mark.timeout(60)
def test_two_beats_make_one_decision_per_tick(app: Celery, redis_client: redis.Redis) -> None:
    settings = _settings()
    results: list[list[dict[str, Any]]] = [[], []]
    stop = time.monotonic() + 5 * INTERVAL_S

    def beat(index: int) -> None:
        while time.monotonic() < stop:
            results[index].append(run_tick(app, settings, redis_client))
            time.sleep(INTERVAL_S / 4)

    threads = [threading.Thread(target=beat, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    decided = sorted(e["at"] for r in results for e in r if e["status"] == "decided")
    skipped = [e for r in results for e in r if e["status"] == "skipped"]
    assert 3 <= len(decided) <= 7, decided
    assert skipped, "the second beat never found the gate closed"
    gaps = [b - a for a, b in itertools.pairwise(decided)]
    assert min(gaps) >= INTERVAL_S * 0.75, gaps
    logged = AutoscaleStore(redis_client, INTERVAL_S).history(100)
    assert len([e for e in logged if e["status"] == "decided"]) == len(decided)


def test_dry_run_logs_the_decision_and_leaves_the_worker_alone(
    app: Celery, scaled_fleet: Fleet, redis_client: redis.Redis
) -> None:
    client = Client(app)
    try:
        client.enqueue_many([("cpu.checksum", {"rounds": 10_000, "i": i}) for i in range(300)])
    finally:
        client.close()
    entry = _decided_tick(app, _settings(dry_run=True), redis_client)
    cpu = entry["pools"]["cpu"]
    assert entry["dry_run"]
    assert cpu["decision"]["action"] == "grow"
    assert cpu["result"] == {"dry_run": "not applied"}
    assert AutoscaleStore(redis_client, INTERVAL_S).prefork_sizes() == {}  # nothing resized
    runner = CliRunner()
    out = runner.invoke(scale_cli, ["history", "--json", "--limit", "1"], env=scaled_fleet.env)
    assert out.exit_code == 0, out.output
    assert json.loads(out.output.splitlines()[0])["tick"] == entry["tick"]
    status = runner.invoke(scale_cli, ["status", "--json"], env=scaled_fleet.env)
    assert json.loads(status.output)["desired_replicas"]["cpu"] >= 1


def test_a_worker_that_never_replies_is_reported_not_counted(app: Celery) -> None:
    started = time.monotonic()
    applied, outcome = resize_worker(app, WorkerView("cpu-gone@nowhere", 1), 2, 0.3)
    assert (applied, outcome) == (0, "no reply")
    assert time.monotonic() - started < 5


@pytest.mark.timeout(60)
def test_unreachable_broker_skips_the_tick(redis_client: redis.Redis, tmp_path: Path) -> None:
    from taskfleet.app import create_app
    from taskfleet.config import load_settings

    dead = "redis://127.0.0.1:1/0"
    broken = create_app(
        load_settings(broker_url=dead, redis_url=dead, database_url="postgresql://x@127.0.0.1:1/x")
    )
    broken.conf.broker_connection_max_retries = 1
    broken.conf.broker_connection_timeout = 1.0
    started = time.monotonic()
    entry = run_tick(broken, _settings(), redis_client)
    assert entry["status"] == "skipped", entry
    assert time.monotonic() - started < 30
