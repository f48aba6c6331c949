"""Retry policies: tenacity strategies composed, decided deterministically (no real waits)."""

from __future__ import annotations

import pytest
from tenacity import stop_after_attempt, stop_after_delay, wait_exponential, wait_fixed

from taskfleet.resilience.retry import RetryGaveUp, RetryPolicy, exponential


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_composed_strategies_decide_wait_and_stop() -> None:
    policy = RetryPolicy(
        stop=stop_after_attempt(4) | stop_after_delay(10),
        wait=wait_fixed(1) + wait_exponential(multiplier=1, max=8),
        retry_on=(ConnectionError,),
    )
    waits = [policy.decide(n, ConnectionError(), 0).wait for n in (1, 2, 3)]
    assert waits == [2.0, 3.0, 5.0]
    assert policy.decide(4, ConnectionError(), 0).reason == "retries_exhausted"
    assert policy.decide(2, ConnectionError(), 10.5).reason == "retries_exhausted"
    assert policy.decide(1, ValueError(), 0).reason == "non_retryable"


def test_call_retries_in_process_with_injected_sleep() -> None:
    clock = FakeClock()
    outcomes = iter([ConnectionError("a"), ConnectionError("b"), "ok"])

    def flaky() -> str:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    policy = exponential(5, initial=0.5, jitter=0.0, on=(ConnectionError,))
    assert policy.call(flaky, clock=clock, sleep=clock.sleep) == "ok"
    assert clock.sleeps == [0.5, 1.0]


def test_call_gives_up_with_reason_and_cause() -> None:
    clock = FakeClock()

    def broken() -> None:
        raise KeyError("nope")

    with pytest.raises(RetryGaveUp) as info:
        exponential(5, on=(ConnectionError,)).call(broken, clock=clock, sleep=clock.sleep)
    assert info.value.reason == "non_retryable"
    assert info.value.attempts == 1
    assert isinstance(info.value.__cause__, KeyError)
    assert clock.sleeps == []


def test_jitter_stays_within_bounds() -> None:
    policy = exponential(10, initial=1.0, maximum=4.0, jitter=0.5)
    for attempt in range(1, 9):
        wait = policy.decide(attempt, RuntimeError(), 0).wait
        assert 0 <= wait <= 4.0
