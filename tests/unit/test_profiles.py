"""CPU worker instances: how a host's CPU processes are shared between dispatching parents."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskfleet.config import ConfigError, load_settings
from taskfleet.fleet import FleetOptions
from taskfleet.fleet.plan import plan_children
from taskfleet.workers.profiles import DISABLE_PERSISTER_ENV, cpu_profiles

pytestmark = pytest.mark.usefixtures("clean_env")


def test_every_cpu_process_is_a_solo_worker_by_default() -> None:
    profiles = cpu_profiles(load_settings(cpu_concurrency=4))
    assert [(p.name, p.pool, p.concurrency) for p in profiles] == [
        ("cpu", "solo", 1),
        ("cpu2", "solo", 1),
        ("cpu3", "solo", 1),
        ("cpu4", "solo", 1),
    ]


def test_one_prefork_worker_runs_every_cpu_process_when_asked() -> None:
    profiles = cpu_profiles(load_settings(cpu_pool="prefork", cpu_concurrency=4))
    assert [(p.name, p.pool, p.concurrency) for p in profiles] == [("cpu", "prefork", 4)]


@pytest.mark.parametrize(
    ("workers", "total", "shares"),
    [(2, 2, [1, 1]), (2, 5, [3, 2]), (3, 7, [3, 2, 2]), (4, 4, [1, 1, 1, 1])],
)
def test_workers_share_the_processes(workers: int, total: int, shares: list[int]) -> None:
    settings = load_settings(cpu_pool="prefork", cpu_workers=workers, cpu_concurrency=total)
    profiles = cpu_profiles(settings)
    assert [p.concurrency for p in profiles] == shares
    assert sum(shares) == total
    assert len({p.name for p in profiles}) == workers  # distinct node names
    assert {p.queues for p in profiles} == {profiles[0].queues}  # all on the CPU queue


def test_a_smaller_override_never_yields_a_worker_without_a_process() -> None:
    settings = load_settings(cpu_pool="prefork", cpu_workers=4, cpu_concurrency=4)
    assert [p.concurrency for p in cpu_profiles(settings, concurrency=2)] == [1, 1]


def test_more_workers_than_processes_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKFLEET_CPU_POOL", "prefork")
    monkeypatch.setenv("TASKFLEET_CPU_WORKERS", "3")
    monkeypatch.setenv("TASKFLEET_CPU_CONCURRENCY", "2")
    with pytest.raises(ConfigError, match=r"TASKFLEET_CPU_WORKERS.*TASKFLEET_CPU_CONCURRENCY"):
        load_settings()


@pytest.mark.parametrize(("pool", "workers"), [("prefork", 2), ("solo", 1)])
def test_the_fleet_starts_every_cpu_worker(tmp_path: Path, pool: str, workers: int) -> None:
    settings = load_settings(cpu_pool=pool, cpu_workers=workers, cpu_concurrency=2)
    options = FleetOptions(flower=False, beat=False)
    plan = plan_children(settings, options, broker="redis://x", data_dir=tmp_path, auth=None)
    workers = [child for child in plan if child.role == "worker"]
    assert [child.name for child in workers] == ["cpu-worker-1", "cpu-worker-2", "io-worker"]
    assert len({child.nodename for child in workers}) == 3
    assert len({child.log_path for child in workers}) == 3
    assert all("-c 1" in " ".join(child.argv) for child in workers[:2])
    assert all(f"-P {pool}" in " ".join(child.argv) for child in workers[:2])
    # One persister for the CPU pool: the second CPU worker does not start its own.
    assert [child.extra_env.get(DISABLE_PERSISTER_ENV) for child in workers] == [None, "1", None]


@pytest.mark.parametrize("workers", [1, 3])
def test_a_solo_pool_runs_one_worker_per_process(workers: int) -> None:
    settings = load_settings(cpu_pool="solo", cpu_workers=workers, cpu_concurrency=3)
    profiles = cpu_profiles(settings)
    assert [(p.pool, p.concurrency) for p in profiles] == [("solo", 1)] * 3
    assert len({p.name for p in profiles}) == 3
    argv = profiles[0].argv()
    assert argv[argv.index("-P") + 1] == "solo"
    assert argv[argv.index("--prefetch-multiplier") + 1] == "1"


def test_a_solo_pool_accepts_any_worker_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKFLEET_CPU_POOL", "solo")
    monkeypatch.setenv("TASKFLEET_CPU_WORKERS", "3")
    monkeypatch.setenv("TASKFLEET_CPU_CONCURRENCY", "2")
    assert len(cpu_profiles(load_settings())) == 2


def test_an_unknown_cpu_pool_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKFLEET_CPU_POOL", "threads")
    with pytest.raises(ConfigError, match="TASKFLEET_CPU_POOL"):
        load_settings()
