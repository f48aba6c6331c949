"""Who went silent: the pinger's evidence, and a live worker's watch calling it dead."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from taskfleet.fleet.children import Child
from taskfleet.fleet.pinger import Pinger
from taskfleet.fleet.watches import ChildWatch

NODE, OTHER = "io-1@host", "cpu-1@host"
LIMIT_S = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


class Broker:
    """A fake ``app.control``: answers from ``answering``, or raises while ``down``."""

    def __init__(self) -> None:
        self.answering = {NODE, OTHER}
        self.down = False
        self.asked: list[list[str]] = []

    def ping(self, destination: list[str], timeout: float, limit: int) -> list[dict[str, Any]]:
        self.asked.append(destination)
        if self.down:
            raise ConnectionError("broker down")
        return [{node: {"ok": "pong"}} for node in destination if node in self.answering]


def pinger(clock: Clock) -> tuple[Pinger, Broker]:
    broker = Broker()
    found = Pinger(SimpleNamespace(control=broker), timeout=0.01, clock=clock)  # type: ignore[arg-type]
    found.poke = lambda: None  # type: ignore[method-assign]  # rounds run when the test says
    return found, broker


def rounds(p: Pinger, clock: Clock, count: int, step: float) -> None:
    for _ in range(count):
        p.round([NODE, OTHER])
        clock.now += step


def test_silence_counts_rounds_without_an_answer_from_the_last_one() -> None:
    clock = Clock()
    p, broker = pinger(clock)
    start = clock()
    rounds(p, clock, 3, 10)
    assert p.silent_for(NODE, start) == 0.0
    broker.answering.discard(NODE)
    quiet_from = clock()
    rounds(p, clock, 5, 10)
    assert p.silent_for(NODE, start) == 50.0  # the last round began 50 s after its last answer
    assert p.silent_for(OTHER, start) == 0.0
    assert p.silent_for(NODE, since=quiet_from + 30) == 10.0  # forgiven at +30 s


def test_rounds_that_fail_at_the_broker_are_no_evidence() -> None:
    clock = Clock()
    p, broker = pinger(clock)
    start = clock()
    rounds(p, clock, 1, 10)
    broker.down = True
    broker.answering.clear()
    rounds(p, clock, 20, 10)  # 200 s of outage
    assert p.silent_for(NODE, start) == 0.0
    broker.down = False
    rounds(p, clock, 1, 10)
    assert p.silent_for(NODE, start) == 210.0  # evidence again, once the broker answers


def test_answered_reports_each_answer_once() -> None:
    clock = Clock()
    p, _ = pinger(clock)
    assert not p.answered(NODE)
    p.round([NODE])
    assert p.answered(NODE)
    assert not p.answered(NODE)


def watch(p: Pinger, clock: Clock, limit: float, node: str | None = NODE) -> ChildWatch:
    child = Child("io-worker", "worker", ["true"], Path("/nonexistent.log"), "", nodename=node)
    return ChildWatch(child, lambda _c: None, p, 5555, silence_limit_s=limit, clock=clock)


def test_a_worker_silent_past_its_limit_is_stalled_until_restarted() -> None:
    clock = Clock()
    p, broker = pinger(clock)
    watched = watch(p, clock, LIMIT_S)
    broker.answering.discard(NODE)
    rounds(p, clock, 6, 10)
    assert watched.stalled() is None  # 50 s
    rounds(p, clock, 2, 10)
    assert watched.stalled() == "stalled: alive, but answered no ping for 70s"
    watched.restart()  # relaunched: its silence counts from now
    assert watched.stalled() is None


def test_no_limit_or_no_worker_never_stalls() -> None:
    clock = Clock()
    p, broker = pinger(clock)
    broker.answering.clear()
    off, beat = watch(p, clock, 0.0), watch(p, clock, LIMIT_S, node=None)
    rounds(p, clock, 20, 10)
    assert off.stalled() is None
    assert beat.stalled() is None
