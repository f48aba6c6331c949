"""Retry policies built from tenacity's composable strategies.

A policy is tenacity's ``stop``, ``wait`` and ``retry`` strategies (combine them with ``|``,
``&`` and ``+`` exactly as in tenacity), plus the exception types that may be retried at all.
``RetryPolicy.decide`` is pure: give it the attempt number, the error and the time since the
first attempt, and it says "give up" or "retry after N seconds". Clock and sleep are
injected, so unit tests run without waiting. The middleware decides where a wait happens:
short waits sleep in the worker, long ones re-queue the job with a countdown.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from tenacity import (
    RetryCallState,
    retry_always,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)
from tenacity.retry import retry_base
from tenacity.stop import stop_base
from tenacity.wait import wait_base

T = TypeVar("T")
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_INITIAL_WAIT_S = 0.1
DEFAULT_MAX_WAIT_S = 60.0
DEFAULT_JITTER_S = 0.1
GiveUpReason = Literal["non_retryable", "retries_exhausted"]


@dataclass(frozen=True)
class Decision:
    """What to do after a failed attempt."""

    retry: bool
    wait: float = 0.0
    reason: GiveUpReason | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """When to retry a failed job and how long to wait first.

    Attributes:
        stop: tenacity stop strategy (e.g. ``stop_after_attempt(5) | stop_after_delay(60)``).
        wait: tenacity wait strategy (e.g. ``wait_exponential_jitter(0.1, 30)``).
        retry_on: only these exception types are retried; anything else is non-retryable.
        retry: extra tenacity retry predicate, and-ed with ``retry_on``.
    """

    stop: stop_base = field(default_factory=lambda: stop_after_attempt(DEFAULT_MAX_ATTEMPTS))
    wait: wait_base = field(
        default_factory=lambda: wait_exponential_jitter(
            multiplier=DEFAULT_INITIAL_WAIT_S, max=DEFAULT_MAX_WAIT_S, jitter=DEFAULT_JITTER_S
        )
    )
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    retry: retry_base = field(default_factory=lambda: retry_always)

    def _state(self, attempt: int, exc: BaseException, elapsed: float) -> RetryCallState:
        state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = attempt
        state.start_time = 0.0
        state.set_exception((type(exc), exc, exc.__traceback__))
        state.outcome_timestamp = elapsed
        return state

    def decide(self, attempt: int, exc: BaseException, elapsed: float) -> Decision:
        """After failed attempt number ``attempt`` (1-based), ``elapsed`` s after the first.

        Returns:
            Retry after ``wait`` seconds, or give up with the reason.
        """
        state = self._state(attempt, exc, elapsed)
        retryable = retry_if_exception_type(self.retry_on) & self.retry
        if not retryable(state):
            return Decision(False, reason="non_retryable")
        if self.stop(state):
            return Decision(False, reason="retries_exhausted")
        return Decision(True, wait=max(0.0, float(self.wait(state))))

    def call(
        self,
        fn: Callable[[], T],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> T:
        """Run ``fn`` under this policy in the current process (waits via ``sleep``).

        Raises:
            RetryGaveUp: the policy gave up; ``__cause__`` is the last error.
        """
        start = clock()
        attempt = 1
        while True:
            try:
                return fn()
            except Exception as exc:
                decision = self.decide(attempt, exc, clock() - start)
                if not decision.retry:
                    raise RetryGaveUp(decision.reason or "retries_exhausted", attempt) from exc
                sleep(decision.wait)
                attempt += 1


class RetryGaveUp(RuntimeError):
    """A retry policy stopped retrying; ``reason`` says why, ``attempts`` how often it ran."""

    def __init__(self, reason: GiveUpReason, attempts: int) -> None:
        super().__init__(f"gave up after {attempts} attempt(s): {reason}")
        self.reason: GiveUpReason = reason
        self.attempts = attempts


def exponential(
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    *,
    initial: float = DEFAULT_INITIAL_WAIT_S,
    maximum: float = DEFAULT_MAX_WAIT_S,
    jitter: float = DEFAULT_JITTER_S,
    on: tuple[type[BaseException], ...] = (Exception,),
) -> RetryPolicy:
    """The common policy: exponential backoff with jitter, a few attempts, named errors only."""
    return RetryPolicy(
        stop=stop_after_attempt(max_attempts),
        wait=wait_exponential_jitter(multiplier=initial, max=maximum, jitter=jitter),
        retry_on=on,
    )
