"""Time limits of solo workers: one SIGALRM timer per job raises the soft, then the hard limit."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

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
