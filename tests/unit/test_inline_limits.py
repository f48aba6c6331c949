"""Time limits of solo workers: one SIGALRM timer per job raises the soft, then the hard limit."""

from __future__ import annotations

import contextlib
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from taskfleet.workers import inline_limits
from taskfleet.workers.inline_limits import InlineTimeLimits

SOFT_S = 0.05
HARD_S = 0.15
#: Far longer than any limit here: a loop that reaches it means no limit fired.
SPIN_DEADLINE_S = 5.0


def _task(timelimit: tuple[float | None, float | None] | None = None, **options: Any) -> Any:
    return SimpleNamespace(
        request=SimpleNamespace(timelimit=timelimit),
        soft_time_limit=options.get("soft"),
        time_limit=options.get("hard"),
    )


def _spin(seconds: float) -> float:
    """Busy Python code, as a runaway job is; returns how long it ran."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        pass
    return time.monotonic() - start


@contextlib.contextmanager
def _alarm_held() -> Iterator[None]:
    """Hold ``SIGALRM`` back (the kernel keeps it pending) until the block ends.

    Between arming and disarming a job's limits a test runs a few lines; a machine that
    stalls there past the 50 ms soft limit would otherwise get the alarm in the middle.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})


@pytest.fixture
def limits() -> Iterator[InlineTimeLimits]:
    cpu_limits = resource.getrlimit(resource.RLIMIT_CPU)
    watch = InlineTimeLimits(SOFT_S, HARD_S)
    previous = watch.take_alarm()
    try:
        yield watch
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        # A job stopped by its hard limit leaves the CPU backstop armed (its worker process
        # is replaced): pytest's own process must not keep it for the tests that follow.
        resource.setrlimit(resource.RLIMIT_CPU, cpu_limits)


@pytest.fixture
def timers(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The seconds every ``setitimer(ITIMER_REAL, ...)`` asked for (the timers still run)."""
    asked: list[float] = []
    real = signal.setitimer

    def recording(which: int, seconds: float, interval: float = 0.0) -> tuple[float, float]:
        if which == signal.ITIMER_REAL:
            asked.append(seconds)
        return real(which, seconds, interval)

    monkeypatch.setattr(inline_limits.signal, "setitimer", recording)
    return asked


def test_a_runaway_job_gets_the_soft_then_the_hard_limit(
    limits: InlineTimeLimits, timers: list[float]
) -> None:
    soft_at: list[float] = []

    def runaway() -> None:
        """Arms its limits, spins, and ignores its soft limit (spins on in the handler).

        The hard limit may arrive anywhere in the handler: it is raised while the soft one
        is being handled, so it carries the soft one as its context.
        """
        try:
            limits.arm(task=_task())
            _spin(SPIN_DEADLINE_S)
        except SoftTimeLimitExceeded:
            soft_at.append(time.monotonic() - started)
            _spin(SPIN_DEADLINE_S)

    started = time.monotonic()  # before arming: the limits count from no earlier than this
    with pytest.raises(TimeLimitExceeded) as hard:
        runaway()
    hard_at = time.monotonic() - started
    limits.disarm()
    assert isinstance(hard.value.__context__, SoftTimeLimitExceeded)  # soft first, then hard
    # The soft alarm was set for the soft limit, then the hard one for the rest of the way.
    assert timers[:2] == [SOFT_S, pytest.approx(HARD_S - SOFT_S)]
    # Alarms never come early; how late they come depends on the machine: no upper bound.
    assert all(at >= SOFT_S for at in soft_at)
    assert hard_at >= HARD_S


def test_a_job_that_ends_in_time_is_not_interrupted(limits: InlineTimeLimits) -> None:
    with _alarm_held():  # an alarm due in between would stay pending, and show below
        limits.arm(task=_task())
        limits.disarm()
    assert _spin(HARD_S * 2) >= HARD_S * 2
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_a_job_with_only_a_hard_limit_gets_it(limits: InlineTimeLimits) -> None:
    limits.default_soft = None

    def runaway() -> None:
        limits.arm(task=_task())  # armed inside: the alarm may come at any line from here
        _spin(SPIN_DEADLINE_S)

    with pytest.raises(TimeLimitExceeded):
        runaway()


def test_message_and_task_limits_come_before_the_app_defaults() -> None:
    watch = InlineTimeLimits(SOFT_S, HARD_S)
    assert watch.limits_of(_task()) == (SOFT_S, HARD_S)
    assert watch.limits_of(_task(soft=1.0, hard=2.0)) == (1.0, 2.0)
    assert watch.limits_of(_task((30.0, 10.0), soft=1.0, hard=2.0)) == (10.0, 30.0)


BACKSTOP_SCRIPT = """
import sys
from types import SimpleNamespace
from taskfleet.workers import inline_limits
from taskfleet.workers.inline_limits import InlineTimeLimits
limits = InlineTimeLimits(None, 0.2, backstop_grace=0.0)
limits.take_alarm()
limits.arm(task=SimpleNamespace(request=SimpleNamespace(timelimit=None)))
print("armed", flush=True)
sum(range(10**12))  # C code that never returns to Python: the alarm cannot get through
print("overran", flush=True)
"""
BACKSTOP_TIMEOUT_S = 60.0


def test_the_kernel_stops_a_job_stuck_in_c_code() -> None:
    done = subprocess.run(
        [sys.executable, "-c", BACKSTOP_SCRIPT],
        capture_output=True,
        text=True,
        timeout=BACKSTOP_TIMEOUT_S,
        check=False,
    )
    assert done.stdout.split() == ["armed"], done.stderr
    assert done.returncode == -signal.SIGXCPU


def test_without_an_event_loop_the_cpu_limit_is_put_back_after_each_job(
    limits: InlineTimeLimits,
) -> None:
    before = resource.getrlimit(resource.RLIMIT_CPU)
    with _alarm_held():
        limits.arm(task=_task())
        armed_soft = resource.getrlimit(resource.RLIMIT_CPU)[0]
        limits.disarm()
    assert armed_soft != resource.RLIM_INFINITY
    assert resource.getrlimit(resource.RLIMIT_CPU) == before


def _soft_cpu_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_CPU)[0]


def test_with_an_event_loop_the_cpu_limit_stays_while_jobs_come_and_goes_when_idle(
    limits: InlineTimeLimits, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Set once for a run of jobs (each within its window), lifted by the loop's timer
    once a whole period passed without a job starting."""
    before = resource.getrlimit(resource.RLIMIT_CPU)
    calls: list[tuple[int, int]] = []
    real = resource.setrlimit
    monkeypatch.setattr(
        inline_limits.resource,
        "setrlimit",
        lambda which, value: (calls.append(value), real(which, value)),
    )
    limits.lift_after_each_job = False  # what LiftBackstopWhenIdle does
    for _ in range(5):
        with _alarm_held():
            limits.arm(task=_task())
            used = time.process_time()
            soft = _soft_cpu_limit()
            limits.disarm()
        assert used + HARD_S + limits.backstop_grace <= soft  # never before the job is due
        assert soft <= used + HARD_S + limits.backstop_grace + inline_limits.CPU_LIMIT_SLACK_S + 1
    assert len(calls) == 1  # one setrlimit for the five jobs
    limits.lift_if_idle()  # a job started since the last tick: kept
    assert _soft_cpu_limit() != before[0]
    limits.lift_if_idle()  # a whole tick without one: lifted
    assert resource.getrlimit(resource.RLIMIT_CPU) == before
    assert len(calls) == 2


def test_the_cpu_limit_is_set_again_once_a_job_would_be_due_after_it(
    limits: InlineTimeLimits,
) -> None:
    limits.lift_after_each_job = False
    with _alarm_held():
        limits.arm(task=_task())
        limits.disarm()
    first = _soft_cpu_limit()
    _spin_cpu(first - time.process_time() - HARD_S - limits.backstop_grace + 0.05)
    with _alarm_held():
        limits.arm(task=_task())
        second = _soft_cpu_limit()
        limits.disarm()
    assert second > first
    assert time.process_time() + HARD_S + limits.backstop_grace <= second


def _spin_cpu(seconds: float) -> None:
    """Use ``seconds`` of this process's CPU (no alarm is armed meanwhile)."""
    end = time.process_time() + max(0.0, seconds)
    while time.process_time() < end:
        pass


def test_no_alarm_once_the_job_code_returned(
    limits: InlineTimeLimits, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inline_limits, "_installed", limits)
    with _alarm_held():  # an alarm due in between would stay pending, and show below
        limits.arm(task=_task())
        inline_limits.job_code_returned()  # what TaskfleetTask.__call__ does on its way out
    assert _spin(HARD_S * 2) >= HARD_S * 2  # the result write and ack are never interrupted
    assert resource.getrlimit(resource.RLIMIT_CPU)[0] != resource.RLIM_INFINITY  # backstop on
    limits.disarm()


def test_a_solo_workers_event_loop_lifts_the_backstop_once_idle(
    limits: InlineTimeLimits, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker bootstep takes the lifting over from ``disarm``: on a real kombu hub, its
    timer lifts the limit a job left in place once a whole period passed without a job."""
    from kombu.asynchronous import Hub

    monkeypatch.setattr(inline_limits, "_installed", limits)
    before = resource.getrlimit(resource.RLIMIT_CPU)
    hub = Hub()
    worker = SimpleNamespace(hub=hub, use_eventloop=True)
    step = inline_limits.LiftBackstopWhenIdle(worker)
    assert step.include_if(worker)
    assert not step.include_if(SimpleNamespace(use_eventloop=False))
    step.start(worker)
    assert limits.lift_after_each_job is False
    with _alarm_held():
        limits.arm(task=_task())
        limits.disarm()
    assert _soft_cpu_limit() != before[0]  # kept after the job
    (entry,) = [item.entry for item in hub.timer._queue]
    assert entry.fun.__wrapped__ == limits.lift_if_idle  # kombu's repeating wrapper
    tick = entry.fun.__wrapped__
    tick()  # the loop's first tick: a job started since the last, kept
    assert _soft_cpu_limit() != before[0]
    tick()  # a whole tick without one
    assert resource.getrlimit(resource.RLIMIT_CPU) == before
    hub.close()


def test_a_job_without_a_hard_limit_runs_without_the_backstop_an_earlier_job_left(
    limits: InlineTimeLimits,
) -> None:
    before = resource.getrlimit(resource.RLIMIT_CPU)
    limits.lift_after_each_job = False
    with _alarm_held():
        limits.arm(task=_task())
        limits.disarm()
    assert _soft_cpu_limit() != before[0]  # kept for the next job
    limits.default_soft = limits.default_hard = None
    with _alarm_held():
        limits.arm(task=_task())  # no limit at all: it may run as long as it likes
        assert resource.getrlimit(resource.RLIMIT_CPU) == before
        limits.disarm()
