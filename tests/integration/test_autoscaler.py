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

import taskfleet.resilience.testing_jobs  # noqa: F401 - diag.gate, for the client
from taskfleet.client import Client
from taskfleet.config.autoscale import AutoscaleSettings, load_autoscale_settings
from taskfleet.config.settings import DEFAULT_SPARE_PREFETCH
from taskfleet.handles import JobHandle
from taskfleet.resilience.diag_keys import gate_key
from taskfleet.routing.depth import redis_queue_depths
from taskfleet.scheduler.actuate import resize_worker
from taskfleet.scheduler.cli import scale_cli
from taskfleet.scheduler.measure import inspect_workers
from taskfleet.scheduler.model import WorkerView
from taskfleet.scheduler.store import GATE_KEY, KEY_PREFIX, AutoscaleStore
from taskfleet.scheduler.tick import run_tick
from tests.support.waiting import wait_for
from tests.support.workers import DIAG_JOBS_ENV, Fleet, running_fleet

#: Jobs held at a gate: a backlog far above what MAX processes (4 jobs each) call for, that
#: cannot drain before the test opens the gate, however fast the machine.
BURST_JOBS = 40
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
        **DIAG_JOBS_ENV,  # diag.gate builds the backlogs
        # A prefork worker, resized by remote control (solo workers are resized through
        # taskfleet up: tests/integration/test_supervisor_restarts.py).
        "TASKFLEET_CPU_POOL": "prefork",
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


class Gate:
    """A backlog of ``diag.gate`` jobs held until :meth:`open` (always opened at teardown)."""

    def __init__(self, app: Celery, client: redis.Redis) -> None:
        self.name = uuid.uuid4().hex
        self.client = client
        self.producer = Client(app)
        self.handles: list[JobHandle] = []

    def hold(self, jobs: int) -> None:
        """Enqueue ``jobs`` jobs that wait for this gate."""
        self.handles += self.producer.enqueue_many(
            [("diag.gate", {"gate": self.name, "i": i}) for i in range(jobs)]
        )

    def open(self) -> None:
        """Let every held job finish."""
        self.client.set(gate_key(self.name), 1, ex=600)

    def finished(self) -> bool:
        """Whether every held job has a final result."""
        return all(h.ready() for h in self.handles)


@pytest.fixture
def gate(app: Celery, redis_client: redis.Redis) -> Iterator[Gate]:
    """A gate for held jobs; opened and drained at teardown, so later tests start idle."""
    held = Gate(app, redis_client)
    try:
        yield held
    finally:
        held.open()
        wait_for(held.finished, 60, "the held jobs to finish")
        held.producer.close()


def _cpu_processes(app: Celery, fleet: Fleet) -> int:
    """Pool processes the worker really runs (from its own ``stats``)."""
    queue = fleet.env["TASKFLEET_CPU_QUEUE"]
    return sum(
        len(r.stats["pool"]["processes"]) for r in inspect_workers(app, 0.5) if queue in r.queues
    )


def _active_jobs(app: Celery, fleet: Fleet) -> int:
    """Jobs the CPU worker reports running (its own ``active`` list)."""
    queue = fleet.env["TASKFLEET_CPU_QUEUE"]
    hosts = [r.hostname for r in inspect_workers(app, 0.5) if queue in r.queues]
    assert hosts, "the CPU worker did not answer"
    replies = app.control.inspect(destination=hosts, timeout=0.5).active() or {}
    assert set(replies) == set(hosts), replies
    return sum(len(jobs) for jobs in replies.values())


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


@pytest.mark.timeout(180)
def test_burst_grows_to_max_within_two_ticks_and_returns_to_min_after_cooldown(
    app: Celery, scaled_fleet: Fleet, redis_client: redis.Redis, gate: Gate
) -> None:
    settings = _settings()
    queue = scaled_fleet.env["TASKFLEET_CPU_QUEUE"]
    first = _decided_tick(app, settings, redis_client)
    assert first["pools"]["cpu"]["decision"]["target"] == MIN, first["pools"]
    gate.hold(BURST_JOBS)
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
    # Every process holds a gated job and the worker one spare: the rest is still queued.
    held = redis_queue_depths(redis_client, [queue])[queue]
    assert held >= BURST_JOBS - MAX - DEFAULT_SPARE_PREFETCH, held
    # Growing keeps the spare: one reserved job per process plus one per worker.
    wait_for(
        lambda: _prefetch_and_processes(app, scaled_fleet) == (MAX + DEFAULT_SPARE_PREFETCH, MAX),
        15,
        "the prefetch count to follow the growth",
    )

    gate.open()
    wait_for(gate.finished, 60, "the burst to finish")
    wait_for(lambda: _active_jobs(app, scaled_fleet) == 0, 15, "the worker to report no job")
    history = AutoscaleStore(redis_client, INTERVAL_S).history(100)
    grown_at = max(e["at"] for e in history if e["pools"]["cpu"]["decision"]["action"] == "grow")
    # Ticks inside the cooldown hold; the first decided tick after it shrinks straight to MIN
    # (the queue is empty and nothing runs, and step_down allows the whole way in one step).
    after = wait_for(
        lambda: (
            (e := _decided_tick(app, settings, redis_client))["at"] - grown_at >= DOWN_COOLDOWN_S
            and e
        ),
        60,
        "a decided tick after the cooldown",
    )
    cpu = after["pools"]["cpu"]
    assert cpu["inputs"]["depth"] == 0, cpu["inputs"]
    assert (cpu["decision"]["action"], cpu["decision"]["target"]) == ("shrink", MIN), cpu
    held_ticks = [
        e
        for e in AutoscaleStore(redis_client, INTERVAL_S).history(100)
        if grown_at < e["at"] < after["at"] and e["status"] == "decided"
    ]
    assert all(e["pools"]["cpu"]["decision"]["action"] != "shrink" for e in held_ticks)
    assert cpu["result"], "the shrink was not applied"
    # The worker really runs MIN processes again (billiard reaps within its 5 s maintenance).
    wait_for(lambda: _cpu_processes(app, scaled_fleet) == MIN, 20, f"{MIN} pool process(es)")


@pytest.mark.timeout(60)
def test_two_beats_make_one_decision_per_tick(app: Celery, redis_client: redis.Redis) -> None:
    """Two beats tick at the same instant, round after round: never two decisions at once.

    A barrier starts both beats' ticks together each round, so in every round one of them
    must find the lock held or the gate closed, however the machine schedules the threads.
    """
    settings = _settings()
    rounds: list[list[dict[str, Any]]] = []
    barrier = threading.Barrier(2, timeout=30)
    wanted_decisions = 3
    deadline = time.monotonic() + 40

    def beat(out: list[dict[str, Any]]) -> None:
        barrier.wait()
        out.append(run_tick(app, settings, redis_client))

    while (
        sum(e["status"] == "decided" for r in rounds for e in r) < wanted_decisions
        and time.monotonic() < deadline
    ):
        entries: list[dict[str, Any]] = []
        threads = [threading.Thread(target=beat, args=(entries,)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        rounds.append(entries)
        # The next round starts once the gate has reopened (a condition, not a sleep).
        wait_for(lambda: not redis_client.exists(GATE_KEY), 10 * INTERVAL_S, "the gate to reopen")
    decided = sorted(e["at"] for r in rounds for e in r if e["status"] == "decided")
    assert len(decided) >= wanted_decisions, rounds
    for entries in rounds:
        assert len(entries) == 2, entries
        assert sum(e["status"] == "decided" for e in entries) <= 1, entries
        assert any(e["status"] == "skipped" for e in entries), entries
    gaps = [b - a for a, b in itertools.pairwise(decided)]
    assert min(gaps) >= INTERVAL_S * 0.75, gaps
    logged = AutoscaleStore(redis_client, INTERVAL_S).history(100)
    assert len([e for e in logged if e["status"] == "decided"]) == len(decided)


def test_dry_run_logs_the_decision_and_leaves_the_worker_alone(
    app: Celery, scaled_fleet: Fleet, redis_client: redis.Redis, gate: Gate
) -> None:
    gate.hold(BURST_JOBS)
    entry = _decided_tick(app, _settings(dry_run=True), redis_client)
    cpu = entry["pools"]["cpu"]
    assert entry["dry_run"]
    assert cpu["decision"]["action"] == "grow"
    assert cpu["result"] == {"dry_run": "not applied"}
    assert AutoscaleStore(redis_client, INTERVAL_S).prefork_sizes() == {}  # nothing resized
    assert _cpu_processes(app, scaled_fleet) == MIN
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
