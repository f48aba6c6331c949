"""Time limits of solo workers: one SIGALRM timer per job raises the soft, then the hard limit."""

from __future__ import annotations

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


@pytest.fixture
def limits() -> Iterator[InlineTimeLimits]:
    watch = InlineTimeLimits(SOFT_S, HARD_S)
    previous = watch.take_alarm()
    try:
        yield watch
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_runaway_job_gets_the_soft_then_the_hard_limit(limits: InlineTimeLimits) -> None:
    limits.arm(task=_task())
    started = time.monotonic()
    with pytest.raises(SoftTimeLimitExceeded):
        _spin(SPIN_DEADLINE_S)
    soft_at = time.monotonic() - started
    with pytest.raises(TimeLimitExceeded):
        _spin(SPIN_DEADLINE_S)  # the job ignored its soft limit
    hard_at = time.monotonic() - started
    limits.disarm()
    assert SOFT_S <= soft_at < HARD_S
    assert hard_at >= HARD_S


def test_a_job_that_ends_in_time_is_not_interrupted(limits: InlineTimeLimits) -> None:
    limits.arm(task=_task())
    limits.disarm()
    assert _spin(HARD_S * 2) >= HARD_S * 2
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_a_job_with_only_a_hard_limit_gets_it(limits: InlineTimeLimits) -> None:
    limits.default_soft = None
    limits.arm(task=_task())
    with pytest.raises(TimeLimitExceeded):
        _spin(SPIN_DEADLINE_S)


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


def test_the_cpu_limit_is_put_back_after_each_job(limits: InlineTimeLimits) -> None:
    before = resource.getrlimit(resource.RLIMIT_CPU)
    limits.arm(task=_task())
    armed_soft = resource.getrlimit(resource.RLIMIT_CPU)[0]
    limits.disarm()
    assert armed_soft != resource.RLIM_INFINITY
    assert resource.getrlimit(resource.RLIMIT_CPU) == before


def test_no_alarm_once_the_job_code_returned(
    limits: InlineTimeLimits, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inline_limits, "_installed", limits)
    limits.arm(task=_task())
    inline_limits.job_code_returned()  # what TaskfleetTask.__call__ does on its way out
    assert _spin(HARD_S * 2) >= HARD_S * 2  # the result write and ack are never interrupted
    assert resource.getrlimit(resource.RLIMIT_CPU)[0] != resource.RLIM_INFINITY  # backstop on
    limits.disarm()
