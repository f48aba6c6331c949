"""The bench's taskfleet systems and W7's bookkeeping (no worker is started)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest

from bench.services import REDIS_DBS
from bench.systems import SYSTEM_NAMES
from bench.systems import taskfleet as tf_systems
from bench.workloads import w7_autoscale as w7
from bench.workloads.base import Options
from taskfleet.config.settings import DEFAULT_CPU_POOL


def test_taskfleet_as_shipped_uses_the_default_cpu_pool() -> None:
    assert tf_systems.TaskfleetSystem.cpu_pool == DEFAULT_CPU_POOL
    assert tf_systems.TaskfleetMetricsSystem.cpu_pool == DEFAULT_CPU_POOL
    prefork = tf_systems.TaskfleetPreforkSystem
    assert (prefork.name, prefork.cpu_pool, prefork.cpu_workers) == (
        "taskfleet_prefork",
        "prefork",
        1,
    )
    assert tf_systems.TaskfleetPerCoreSystem.cpu_pool == "prefork"
    assert not hasattr(tf_systems, "TaskfleetSoloSystem")


def test_every_system_has_a_redis_database_of_its_own() -> None:
    assert "taskfleet_prefork" in SYSTEM_NAMES
    assert "taskfleet_solo" not in SYSTEM_NAMES
    assert set(SYSTEM_NAMES) <= set(REDIS_DBS)
    assert len(set(REDIS_DBS.values())) == len(REDIS_DBS)


def test_w7_runs_taskfleet_as_shipped_and_prefork() -> None:
    assert w7.SYSTEMS[:2] == ("taskfleet", "taskfleet_prefork")
    assert set(w7.RUNNERS) == set(w7.SYSTEMS) == set(w7.LABELS)


def test_the_sampler_integrates_whatever_it_counts() -> None:
    counts = iter([1, 2, 4])
    sampler = w7.PoolSampler(lambda: next(counts))
    sampler.samples = [(10.0, 1), (11.0, 2), (12.0, 4), (14.0, 1)]
    assert sampler.count() == 1
    assert sampler.integrate(10.0, 14.0) == pytest.approx(1 + 2 + 8)
    assert sampler.integrate(11.5, 12.5) == pytest.approx(0.5 * 2 + 0.5 * 4)
    assert sampler.peak(10.0, 14.0) == 4
    assert sampler.first_reaching(4, 10.0) == pytest.approx(2.0)
    assert sampler.first_reaching(5, 10.0) is None


class _FakeRedis:
    def __init__(self, metas: dict[str, dict[str, Any]]) -> None:
        self.metas = metas

    def mget(self, keys: list[str]) -> list[bytes | None]:
        return [json.dumps(self.metas[k]).encode() if k in self.metas else None for k in keys]


def test_first_jobs_per_worker_from_the_results() -> None:
    metas = {
        w7.META_PREFIX + "a": {"worker": "cpu-1@h", "date_done": "2026-01-01T00:00:02+00:00"},
        w7.META_PREFIX + "b": {"worker": "cpu-1@h", "date_done": "2026-01-01T00:00:01"},
        w7.META_PREFIX + "c": {"worker": "cpu2-1@h", "date_done": "2026-01-01T00:00:05+00:00"},
    }
    firsts, jobs = w7._first_jobs(_FakeRedis(metas), ["a", "b", "c", "missing"])  # type: ignore[arg-type]
    assert jobs == {"cpu-1@h": 2, "cpu2-1@h": 1}
    assert firsts["cpu2-1@h"] - firsts["cpu-1@h"] == pytest.approx(4.0)


@dataclass
class _Child:
    name: str
    popen: subprocess.Popen[bytes]
    nodename: str | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def returncode(self) -> int | None:
        return self.popen.poll()


@dataclass
class _Fleet:
    children: list[_Child]


def test_the_fleet_count_is_its_live_cpu_workers() -> None:
    sleepers = [subprocess.Popen(["sleep", "30"]) for _ in range(3)]
    try:
        fleet = _Fleet(
            [
                _Child("cpu-worker", sleepers[0], "cpu-1@h"),
                _Child("cpu-worker-2", sleepers[1], "cpu2-1@h"),
                _Child("io-worker", sleepers[2], "io-1@h"),
            ]
        )
        run = w7.FleetRun(fleet)  # type: ignore[arg-type]
        assert run.count() == 2
        sleepers[1].terminate()
        sleepers[1].wait(5)
        assert run.count() == 1
        assert run.seen[sleepers[1].pid].gone is not None
        assert {s.name for s in run.seen.values()} == {"cpu-worker", "cpu-worker-2"}
    finally:
        for proc in sleepers:
            proc.kill()
            proc.wait(5)


def _good(drain: float, procs: float) -> dict[str, Any]:
    return {
        "drain_s": drain,
        "jobs_per_s": 100 / drain,
        "proc_s_drain": procs,
        "proc_s_total": procs * 2,
        "tail_s": 1.0,
        "back_to_min": True,
        "peak_procs": 4,
        "to_2_s": 1.0,
        "to_max_s": 1.0,
        "autoscaler": {"ticks": 3, "tick_s_median": 1.0, "tick_s_max": 1.5, "actions": []},
        "fleet": {
            "processes": [
                {"first_job_s": 0.0, "launch_to_first_job_s": -9.0, "launched_s": -9.0},
                {"first_job_s": 0.4, "launch_to_first_job_s": 9.4, "launched_s": -9.0, "jobs": 7},
                {"first_job_s": 3.0, "launch_to_first_job_s": 2.5, "launched_s": 0.5},
            ]
        },
    }


def test_the_drain_verdict_is_for_taskfleet_as_shipped(monkeypatch: pytest.MonkeyPatch) -> None:
    data = {
        "cpu_ms_per_job": 2.0,
        "taskfleet": [_good(6.0, 10.0)],  # 0.6x Celery's drain: met
        "taskfleet_prefork": [_good(20.0, 10.0)],  # would be 2x: missed
        "celery": [_good(10.0, 20.0)],
        "celery_p1": [{"error": "boom"}],
    }
    monkeypatch.setattr(w7, "run", lambda n, runs, tail_s: data)
    table = w7.table(Options(systems=(), quick=True))
    rows = {row[0]: row for row in table.rows}
    assert all(len(row) == len(table.headers) for row in table.rows)
    assert rows[f"taskfleet ÷ {w7.LABELS['celery']}"][1] == "0.60x"
    targets = [row for row in table.rows if row[0] == "target"]
    assert targets[0][1].endswith(": met")
    assert rows["taskfleet ÷ taskfleet_prefork"][1] == "0.30x"
    assert rows["taskfleet_prefork ÷ celery"][1] == "2.00x"
    assert any("median 2.50 s" in note for note in table.notes)  # the one started cold
    # The standby (launched before the burst) is told apart, with its first job and count.
    assert any(
        "standby" in note and "0.40 s after the first publish" in note and "7 jobs" in note
        for note in table.notes
    )
