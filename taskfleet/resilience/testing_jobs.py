"""Diagnostic jobs (``diag.*``) that fail on purpose: always, intermittently, or by killing
their own worker process. Tests and operators use them to watch retries, breakers and dead
letters work on a real fleet. Each counts its calls in Redis under ``payload["counter"]``.
Two more hold a process on purpose: ``diag.gate`` until a test opens its gate, and
``diag.record`` (``diag.record_io`` on the I/O pool), which logs every execution for the
chaos harness (``bench/chaos``) to count lost and duplicated jobs.

None of them is registered unless ``TASKFLEET_DIAG_JOBS`` is true
(:data:`~taskfleet.tasks.table.DIAG_JOB_MODULES`). Every Redis key they touch is under
``taskfleet:diag:`` (:mod:`taskfleet.resilience.diag_keys`; the payload names only the part
after a key's prefix), and every key they write expires: a payload cannot reach another key
of the fleet, such as the autoscaler's lock.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import redis
from tenacity import stop_after_attempt, wait_fixed

from taskfleet.resilience.diag_keys import (
    DIAG_KEY_TTL_S,
    counter_key,
    down_key,
    gate_key,
    hits_key,
    record_log_key,
    record_release_key,
)
from taskfleet.resilience.retry import RetryPolicy, exponential
from taskfleet.resilience.runtime import declare_breaker, runtime
from taskfleet.resilience.storage import BreakerConfig
from taskfleet.tasks.base import job
from taskfleet.tasks.job_app import app

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
#: ``diag.gate``: how often it looks at its key (``gate_key``), and the longest it may be
#: held closed.
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


def _incr(key: str) -> int:
    """INCR ``key`` (one of this module's) and keep it expiring ``DIAG_KEY_TTL_S`` from now."""
    pipe = runtime().redis.pipeline(transaction=False)
    pipe.incr(key)
    pipe.expire(key, DIAG_KEY_TTL_S)
    return int(pipe.execute()[0])


def _count(payload: Any) -> int:
    """Count one call under ``counter_key(payload["counter"])`` (0 if it names none)."""
    name = payload.get("counter") if isinstance(payload, dict) else None
    return _incr(counter_key(str(name))) if name else 0


def _dependency(payload: dict[str, Any]) -> dict[str, Any]:
    """A stand-in dependency: down while ``down_key(payload["down_key"])`` exists."""
    name = str(payload["down_key"])
    if runtime().redis.exists(down_key(name)):
        _incr(hits_key(name))
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


#: ``diag.record``: how often a held job looks for its release key (``record_release_key``),
#: the longest it may hold, how long it keeps trying to append to its log
#: (``record_log_key``) while Redis is unreachable, and how long a log is kept.
RECORD_POLL_S = 0.02
MAX_RECORD_HOLD_MS = 60_000
RECORD_APPEND_RETRY_S = 60.0
RECORD_APPEND_BACKOFF_S = 0.1
RECORD_LOG_TTL_S = DIAG_KEY_TTL_S


def _record_append(key: str, entry: dict[str, Any]) -> None:
    """RPUSH ``entry`` (JSON) to ``key``, retrying while Redis is unreachable (bounded).

    The log is the measuring instrument of chaos runs that restart Redis: an execution must
    not go unrecorded because its first append met the restart.

    Raises:
        redis.RedisError: Redis stayed unreachable for ``RECORD_APPEND_RETRY_S``.
    """
    client = runtime().redis
    deadline = time.monotonic() + RECORD_APPEND_RETRY_S
    while True:
        try:
            pipe = client.pipeline(transaction=False)
            pipe.rpush(key, json.dumps(entry, separators=(",", ":")))
            pipe.expire(key, RECORD_LOG_TTL_S)
            pipe.execute()
            return
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            if time.monotonic() >= deadline:
                raise
            time.sleep(RECORD_APPEND_BACKOFF_S)


def _released(key: str) -> bool:
    """Whether the release key exists; an unreachable Redis releases nothing (keep holding)."""
    try:
        return bool(runtime().redis.exists(key))
    except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
        return False


def _record(task: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """Log one execution of ``task``, hold for ``payload["ms"]``, log its end.

    Raises:
        ValueError: ``log`` is not a non-empty string or ``ms`` is not a number in range.
    """
    name = payload.get("log") if isinstance(payload, dict) else None
    ms = payload.get("ms", 0) if isinstance(payload, dict) else None
    if not isinstance(name, str) or not name:
        raise ValueError(f"log must be a non-empty string, got {name!r}")
    if not isinstance(ms, int | float) or isinstance(ms, bool) or not 0 <= ms <= MAX_RECORD_HOLD_MS:
        raise ValueError(f"ms must be a number in 0..{MAX_RECORD_HOLD_MS}, got {ms!r}")
    request = task.request
    entry: dict[str, Any] = {
        "id": request.id,
        "pid": os.getpid(),
        "attempt": int(request.retries or 0) + 1,
        "redelivered": bool((request.delivery_info or {}).get("redelivered")),
    }
    key = record_log_key(name)
    _record_append(key, {**entry, "phase": "start", "at": time.time()})
    if ms:
        release = record_release_key(name)
        deadline = time.monotonic() + ms / 1000
        while time.monotonic() < deadline and not _released(release):
            time.sleep(min(RECORD_POLL_S, max(0.0, deadline - time.monotonic())))
    _record_append(key, {**entry, "phase": "done", "at": time.time()})
    return {"pid": entry["pid"], "attempt": entry["attempt"]}


@job(app, "diag.record", "cpu", bind=True)
def record(self: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """Append this execution to the log ``payload["log"]``, hold ``payload["ms"]``, return.

    Every execution appends ``{"id", "pid", "attempt", "redelivered", "phase": "start",
    "at"}`` to the Redis list ``record_log_key(log)`` before holding, and the same with
    ``"phase": "done"`` after, so a chaos run counts executions (starts) and completions per
    job id. The hold sleeps in steps of ``RECORD_POLL_S``, so a kill lands mid-execution,
    and ends early once ``record_release_key(log)`` exists.

    Raises:
        ValueError: ``log`` is not a non-empty string or ``ms`` is out of range.
    """
    return _record(self, payload)


@job(app, "diag.record_io", "io", bind=True)
def record_io(self: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """``diag.record`` on the I/O (gevent) pool: the same log entries, hold and result.

    Raises:
        ValueError: ``log`` is not a non-empty string or ``ms`` is out of range.
    """
    return _record(self, payload)
