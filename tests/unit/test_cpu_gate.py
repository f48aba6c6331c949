"""The CPU gate: beyond the core count, solo workers grow only while they are not computing."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from taskfleet.fleet.cpu_gate import WINDOW_S, CpuGate, runnable_seconds

STEP_S = 0.1


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


class Busy:
    """Runnable seconds per pid, advanced by the test at a chosen share of wall time."""

    def __init__(self) -> None:
        self.used: dict[int, float] = {}
        self.gone: set[int] = set()

    def __call__(self, pid: int) -> float | None:
        return None if pid in self.gone else self.used.setdefault(pid, 0.0)

    def run(self, shares: dict[int, float], seconds: float) -> None:
        for pid, share in shares.items():
            self.used[pid] = self.used.get(pid, 0.0) + share * seconds


def gate(cores: int = 2) -> tuple[CpuGate, Busy, Clock]:
    busy, clock = Busy(), Clock()
    return CpuGate(cores=cores, busy_seconds=busy, clock=clock), busy, clock


def watch(made: CpuGate, busy: Busy, clock: Clock, shares: dict[int, float], s: float) -> None:
    """Members run at ``shares`` for ``s`` seconds, sampled every ``STEP_S``."""
    made.sample(shares)
    for _ in range(round(s / STEP_S)):
        clock.now += STEP_S
        busy.run(shares, STEP_S)
        made.sample(shares)


def test_below_the_core_count_the_pool_always_grows() -> None:
    made, _, _ = gate(cores=4)
    assert made.allows_growth(3, [1, 2, 3])  # nothing sampled yet


def test_at_the_core_count_computing_workers_hold_the_grow() -> None:
    made, busy, clock = gate()
    assert not made.allows_growth(2, [1, 2])  # not watched yet: judged next round
    watch(made, busy, clock, {1: 1.0, 2: 0.9}, WINDOW_S + STEP_S)
    assert not made.allows_growth(2, [1, 2])
    assert made.share is not None
    assert made.share >= 0.9


def test_workers_that_wait_let_the_pool_grow() -> None:
    made, busy, clock = gate()
    watch(made, busy, clock, {1: 0.2, 2: 0.1}, WINDOW_S + STEP_S)
    assert made.allows_growth(2, [1, 2])
    assert made.allows_growth(3, [1, 2])  # beyond it too


def test_the_window_forgets_an_older_burst() -> None:
    made, busy, clock = gate()
    watch(made, busy, clock, {1: 1.0, 2: 1.0}, 3.0)
    assert not made.allows_growth(2, [1, 2])
    watch(made, busy, clock, {1: 0.0, 2: 0.0}, WINDOW_S + STEP_S)
    assert made.allows_growth(2, [1, 2])  # drained: the held grow goes ahead


def test_a_new_member_is_watched_a_whole_window_before_the_next_grow() -> None:
    made, busy, clock = gate()
    watch(made, busy, clock, {1: 0.0, 2: 0.0}, WINDOW_S + STEP_S)
    assert made.allows_growth(2, [1, 2])
    watch(made, busy, clock, {1: 0.0, 2: 0.0, 3: 0.0}, STEP_S)
    assert not made.allows_growth(3, [1, 2, 3])
    watch(made, busy, clock, {1: 0.0, 2: 0.0, 3: 0.0}, WINDOW_S)
    assert made.allows_growth(3, [1, 2, 3])


def test_members_that_left_are_forgotten_and_a_gone_one_is_dropped() -> None:
    made, busy, clock = gate()
    watch(made, busy, clock, {1: 1.0, 2: 1.0}, WINDOW_S + STEP_S)
    made.sample([1])
    assert set(made._history) == {1}
    busy.gone.add(1)
    made.sample([1])
    assert made._history == {}


def test_runnable_seconds_counts_a_real_process_on_cpu_and_none_once_it_is_gone() -> None:
    before = runnable_seconds(os.getpid())
    assert before is not None
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    after = runnable_seconds(os.getpid())
    assert after is not None
    assert after - before >= 0.04
    sleeper = subprocess.Popen([sys.executable, "-c", "pass"])
    sleeper.wait()
    assert runnable_seconds(sleeper.pid) is None
