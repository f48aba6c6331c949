"""W8's bookkeeping: process roles from command lines, growth after the first mark, sampling."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from bench.soak import run
from bench.soak.memory import ProcessMemory, role_of
from bench.soak.report import growth, leak_growth, system_section
from bench.soak.run import Mark, SoakResult, cpu_unit_role
from bench.soak.systems import reservoir

WORKER = ["python", "-m", "celery", "-A", "taskfleet.app", "worker", "-P", "prefork", "-Q", "cpu"]
SOLO = ["python", "-m", "celery", "-A", "taskfleet.app", "worker", "-P", "solo", "-Q", "cpu"]
IO = ["python", "-m", "celery", "-A", "taskfleet.app", "worker", "-P", "gevent", "-Q", "io,celery"]
MIB = 2**20


def test_roles_of_a_taskfleet_up_tree() -> None:
    assert role_of(["python", "/venv/bin/taskfleet", "up", "--no-flower"], None) == "supervisor"
    assert role_of(WORKER, "supervisor") == "cpu worker"
    assert role_of(IO, "supervisor") == "io worker"
    assert role_of(WORKER, "cpu worker") == "cpu pool"
    assert role_of(["python", "-m", "taskfleet.sidecar"], "io worker") == "io worker sidecar"
    assert (
        role_of(["python", "-m", "taskfleet.results.persister"], "cpu worker")
        == "cpu worker persister"
    )
    assert role_of(["python", "-m", "celery", "-A", "taskfleet.app", "beat"], "supervisor") == (
        "beat"
    )
    metrics = ["/venv/bin/python", "-m", "taskfleet.cli", "metrics", "serve"]
    assert role_of(metrics, "supervisor") == "metrics endpoint"


def test_solo_cpu_workers_are_a_role_of_their_own() -> None:
    assert role_of(SOLO, "supervisor") == "cpu worker (solo)"
    lean = ["python", "-m", "taskfleet.workers.main", *SOLO[3:]]  # how ``up`` starts them
    assert role_of(lean, "supervisor") == "cpu worker (solo)"
    assert role_of([*SOLO[:6], "--pool=solo", "-Q", "cpu"], "supervisor") == "cpu worker (solo)"
    assert role_of(["python", "-m", "taskfleet.sidecar"], "cpu worker (solo)") == (
        "cpu worker (solo) sidecar"
    )
    assert role_of(["python", "-m", "taskfleet.results.persister"], "cpu worker (solo)") == (
        "cpu worker (solo) persister"
    )
    solo = ProcessMemory(1, "cpu worker (solo)", 0, 0)
    assert solo.is_solo
    assert not solo.is_pool
    assert cpu_unit_role([solo]) == ("solo", "cpu worker (solo)")
    assert cpu_unit_role([ProcessMemory(2, "cpu pool", 0, 0)]) == ("prefork", "cpu pool")


def test_a_stock_celery_worker_is_the_root_of_its_tree() -> None:
    stock = ["celery", "-A", "bench.systems.celery_app", "worker", "-c", "2", "-Q", "bench"]
    assert role_of(stock, None) == "bench worker"
    assert role_of(stock, "bench worker") == "bench pool"


def _mark(jobs: int, sizes: dict[int, int]) -> Mark:
    processes = [ProcessMemory(pid, "p", uss * MIB, uss * MIB) for pid, uss in sizes.items()]
    return Mark(jobs, 0.0, processes, 0, 0)


def test_growth_is_the_largest_later_size_over_the_first() -> None:
    result = SoakResult("s", "s")
    result.marks = [_mark(100, {1: 100, 2: 50}), _mark(200, {1: 110, 2: 50, 3: 80})]
    result.marks.append(_mark(300, {1: 104, 3: 90}))
    grew = growth(result)
    assert round(grew[1], 3) == 0.1  # the peak counts, not the last mark
    assert grew[2] == 0.0
    assert 3 not in grew  # started after the first mark: no baseline


def test_reservoir_keeps_a_uniform_sample_of_fixed_size() -> None:
    rng = random.Random(1)
    sample: list[str] = []
    seen = 0
    for batch in range(100):
        ids = [f"{batch}-{i}" for i in range(100)]
        reservoir(sample, ids, seen, 50, rng)
        seen += len(ids)
    assert len(sample) == 50
    assert len(set(sample)) == 50
    late = sum(1 for job_id in sample if int(job_id.split("-")[0]) >= 50)
    assert 10 <= late <= 40  # about half from the second half of the stream


def test_a_process_grows_only_when_both_uss_and_rss_grow() -> None:
    def proc(pid: int, uss: int, rss: int) -> ProcessMemory:
        return ProcessMemory(pid, "p", uss * MIB, rss * MIB)

    result = SoakResult("s", "s")
    result.marks = [
        Mark(100, 0.0, [proc(1, 13, 90), proc(2, 50, 60)], 0, 0),
        # pid 1: a sibling exited, its shared pages became its own (USS only);
        # pid 2: allocated 10 MiB (both).
        Mark(200, 0.0, [proc(1, 19, 90), proc(2, 60, 70)], 0, 0),
    ]
    grew = leak_growth(result)
    assert grew[1] == 0.0
    assert round(grew[2], 3) == round(10 / 60, 3)


def _solo_soak() -> SoakResult:
    def proc(pid: int, role: str, uss: int) -> ProcessMemory:
        return ProcessMemory(pid, role, uss * MIB, (uss + 60) * MIB)

    solo = "cpu worker (solo)"
    result = SoakResult("taskfleet", "taskfleet")
    result.marks = [
        Mark(100, 1.0, [proc(1, "supervisor", 60), proc(2, solo, 30), proc(3, solo, 31)], 0, 0),
        # pid 3 retired by the autoscaler, pid 4 started by the supervisor
        Mark(200, 2.0, [proc(1, "supervisor", 60), proc(2, solo, 30), proc(4, solo, 29)], 0, 0),
        # pid 3's number reused by some other process: not the same one
        Mark(300, 3.0, [proc(1, "supervisor", 60), proc(2, solo, 30), proc(3, "beat", 90)], 0, 0),
    ]
    result.final = {
        "jobs_per_s": 100.0,
        "redis_used_bytes": 0,
        "result_keys": 0,
        "read_back": [1, 1],
    }
    result.late_fork = {
        "pool": "solo",
        "jobs": 50,
        "jobs_before_ready": 20,
        "shrunk_after_s": 31.0,
        "probe_s": 12.0,
        "late": [vars(proc(5, solo, 28))],
        "late_started_after_s": [4.0],
        "early_at_first_mark": [vars(proc(2, solo, 30)), vars(proc(3, solo, 31))],
        "early_at_last_sight": [vars(proc(2, solo, 30)), vars(proc(3, solo, 31))],
    }
    return result


def test_a_retired_solo_worker_is_neither_growth_nor_failure() -> None:
    result = _solo_soak()
    grew = leak_growth(result)
    assert grew == {1: 0.0, 2: 0.0}  # pid 3 left (and its pid came back as beat), pid 4 is new
    text = system_section(result, None)
    assert "| cpu worker (solo) (pid 3) | 31.0 |  |  | exited |" in text  # after one mark
    assert "| cpu worker (solo) (pid 2) | 30.0 | 30.0 | 30.0 | +0.0% / +0.0% |" in text
    assert "| cpu worker (solo) (pid 4) |  | 29.0 |  | started later |" in text
    assert "| beat (pid 3) |  |  | 90.0 | started later (still running) |" in text
    assert "+0.0% (within the 5% target)" in text
    assert "Solo CPU workers started after the first mark" in text
    assert "29.0 / 89.0 (at 200)" in text
    assert "shrank the CPU pool to one solo worker 31 s after the last mark" in text
    assert "started 1 new solo worker(s) (started 4 s after the jobs were fed)" in text
    assert "for 50 more jobs (20 fed before it was up, 30 after)" in text


def test_a_process_that_exits_after_some_marks_keeps_its_growth_until_then() -> None:
    result = SoakResult("s", "s")
    result.marks = [_mark(100, {1: 100, 2: 50}), _mark(200, {1: 100, 2: 55}), _mark(300, {1: 100})]
    result.final = {"jobs_per_s": 1.0, "redis_used_bytes": 0, "result_keys": 0, "read_back": [0, 0]}
    text = system_section(result, None)
    assert "| p (pid 2) | 50.0 | 55.0 |  | +10.0% / +10.0%, gone after 200 |" in text
    assert "+10.0% (**over** the 5% target)" in text  # it grew while it lived


def test_the_late_start_probe_feeds_until_a_new_solo_worker_is_up_then_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fed: list[int] = []
    monkeypatch.setattr(run, "_feed", lambda _s, _start, n, *_: fed.append(n))
    # the new worker is up once three batches went out
    monkeypatch.setattr(run, "_started_workers", lambda *_: {9} if len(fed) >= 3 else set())
    system = SimpleNamespace(root_pid=lambda: 1, standby_pids=set)
    total, ready_after = run._feed_until_started(system, 0, 8, 5, set())  # type: ignore[arg-type]
    assert ready_after == 15
    assert total == 23  # 8 more once it was up: a batch of 5 and the remaining 3
    assert fed == [5, 5, 5, 5, 3]


def test_forked_solo_workers_are_told_apart_by_their_parent_the_fork_server() -> None:
    """Forked from ``up``'s fork server, a solo worker carries the server's command line."""
    server = [
        "/venv/bin/python",
        "-B",
        "-c",
        "from multiprocessing.forkserver import main; main(3)",
    ]
    assert role_of(server, "supervisor") == "fork server"
    assert role_of(server, "fork server") == "cpu worker (solo)"
    tracker = [
        "/venv/bin/python",
        "-c",
        "from multiprocessing.resource_tracker import main;main(9)",
    ]
    assert role_of(tracker, "supervisor") == "resource tracker"
    assert role_of(["python", "-m", "taskfleet.sidecar"], "cpu worker (solo)") == (
        "cpu worker (solo) sidecar"
    )
