"""Diagnostic jobs (``diag.*``) that fail on purpose: always, intermittently, or by killing
their own worker process. Tests and operators use them to watch retries, breakers and dead
letters work on a real fleet. Each counts its calls in Redis under ``payload["counter"]``.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from tenacity import stop_after_attempt, wait_fixed

from taskfleet.app import app
from taskfleet.resilience.retry import RetryPolicy, exponential
from taskfleet.resilience.runtime import declare_breaker, runtime
from taskfleet.resilience.storage import BreakerConfig
from taskfleet.tasks.base import job

#: Breakers of the diagnostic jobs: small thresholds so a test sees them open quickly, and a
#: reset timeout far above the milliseconds a worker needs to take the jobs it already holds,
#: so on a slow or loaded machine those jobs still meet the open breaker, not a half-open one.
DIAG_BREAKER = "diag-dependency"
DIAG_GUARDED_BREAKER = "diag-guarded"
DIAG_BREAKER_CONFIG = BreakerConfig(
    fail_max=3, failure_rate=0.5, window=10.0, min_calls=20, reset_timeout=10.0, half_open_calls=1
)
#: A retry wait longer than the in-process limit: the job is re-queued with a countdown.
REQUEUE_WAIT_S = 1.2
#: ``diag.gate``: its Redis key (the payload names only the part after this prefix), how
#: often it looks, and the longest it may be held closed.
GATE_PREFIX = "taskfleet:diag:gate:"
GATE_POLL_S = 0.02
MAX_GATE_WAIT_S = 120.0


def _fallback(payload: Any = None) -> dict[str, Any]:
    return {"fallback": True}


declare_breaker(DIAG_BREAKER, config=DIAG_BREAKER_CONFIG, failure_types=(ConnectionError,))
declare_breaker(
    DIAG_GUARDED_BREAKER,
    config=DIAG_BREAKER_CONFIG,
    fallback=_fallback,
    failure_types=(ConnectionError,),
)


def _count(payload: Any) -> int:
    """Count one call under ``payload["counter"]`` (0 if the payload names none)."""
    key = payload.get("counter") if isinstance(payload, dict) else None
    return int(runtime().redis.incr(str(key))) if key else 0


def _dependency(payload: dict[str, Any]) -> dict[str, Any]:
    """A stand-in dependency: down while the Redis key ``payload["down_key"]`` exists."""
    rt = runtime()
    if rt.redis.exists(str(payload["down_key"])):
        rt.redis.incr(f"{payload['down_key']}:hits")
        raise ConnectionError("dependency unreachable")
    return {"ok": True, "n": payload.get("n")}


@job(app, "diag.always_fails", "cpu", retry=exponential(3, initial=0.01, on=(ConnectionError,)))
def always_fails(payload: dict[str, Any]) -> None:
    """Fail every time with a retryable error."""
    _count(payload)
    raise ConnectionError("always down")


@job(app, "diag.flaky", "cpu", retry=exponential(5, initial=0.01, on=(ConnectionError,)))
def flaky(payload: dict[str, Any]) -> dict[str, Any]:
    """Fail the first ``payload["fail_times"]`` calls, then succeed."""
    calls = _count(payload)
    if calls <= int(payload.get("fail_times", 1)):
        raise ConnectionError(f"flaky call {calls}")
    return {"calls": calls}


@job(
    app,
    "diag.slow_retry",
    "cpu",
    retry=RetryPolicy(stop=stop_after_attempt(3), wait=wait_fixed(REQUEUE_WAIT_S)),
)
def slow_retry(payload: dict[str, Any]) -> dict[str, Any]:
    """Fail once, then succeed; the retry waits long enough to be re-queued."""
    calls = _count(payload)
    if calls < 2:
        raise ConnectionError("first call fails")
    return {"calls": calls, "pid": os.getpid()}


@job(app, "diag.wrong_error", "cpu", retry=exponential(5, initial=0.01, on=(ConnectionError,)))
def wrong_error(payload: dict[str, Any]) -> None:
    """Raise an error the policy does not retry."""
    _count(payload)
    raise KeyError("not retryable")


@job(app, "diag.echo", "cpu")
def echo(payload: Any) -> Any:
    """Return the payload (call it with the wrong arguments to see validation fail)."""
    return payload


@job(app, "diag.dependency", "cpu", breaker=DIAG_BREAKER)
def dependency(payload: dict[str, Any]) -> dict[str, Any]:
    """Call a dependency through the shared breaker; deferred while it is open."""
    return _dependency(payload)


@job(app, "diag.guarded", "cpu", breaker=DIAG_GUARDED_BREAKER)
def guarded(payload: dict[str, Any]) -> dict[str, Any]:
    """Call a dependency through a breaker with a fallback."""
    return _dependency(payload)


@job(app, "diag.suicide", "cpu")
def suicide(payload: dict[str, Any]) -> None:
    """SIGKILL the worker process running it, every time (a poison pill)."""
    _count(payload)
    os.kill(os.getpid(), signal.SIGKILL)


def gate_key(name: str) -> str:
    """The Redis key that opens the ``diag.gate`` jobs waiting on gate ``name``."""
    return GATE_PREFIX + name


@job(app, "diag.gate", "cpu")
def gate(payload: dict[str, Any]) -> dict[str, Any]:
    """Hold a CPU process until gate ``payload["gate"]`` opens (its key exists in Redis).

    A backlog of gate jobs cannot drain before the test opens the gate, however fast the
    machine: tests build queue depth with it instead of sizing it in CPU work. The job never
    waits longer than ``payload["max_s"]`` (default and cap ``MAX_GATE_WAIT_S``).

    Raises:
        ValueError: ``gate`` is not a non-empty string or ``max_s`` is not a positive number.
    """
    name = payload.get("gate") if isinstance(payload, dict) else None
    max_s = payload.get("max_s", MAX_GATE_WAIT_S) if isinstance(payload, dict) else None
    if not isinstance(name, str) or not name:
        raise ValueError(f"gate must be a non-empty string, got {name!r}")
    if not isinstance(max_s, int | float) or isinstance(max_s, bool) or max_s <= 0:
        raise ValueError(f"max_s must be a positive number, got {max_s!r}")
    key = gate_key(name)
    client = runtime().redis
    started = time.monotonic()
    deadline = started + min(float(max_s), MAX_GATE_WAIT_S)
    while not (opened := bool(client.exists(key))) and time.monotonic() < deadline:
        time.sleep(GATE_POLL_S)
    return {"opened": opened, "waited_s": round(time.monotonic() - started, 3)}
