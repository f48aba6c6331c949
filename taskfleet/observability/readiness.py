"""Readiness: whether this fleet can take and finish jobs now (``/readyz``, ``taskfleet health``).

Each check answers ok or not with one line of detail: the broker, Redis and Postgres answer;
every pool's queue has at least one consumer (asked of the workers, as ``celery inspect
active_queues``); no queue's oldest job is older than ``TASKFLEET_READY_MAX_JOB_AGE_S``; the
persistence stream's oldest entry is younger than ``TASKFLEET_READY_MAX_PERSIST_LAG_S``.
Every probe is bounded by ``TASKFLEET_READY_PROBE_TIMEOUT_S``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery
from sqlalchemy import text
from sqlalchemy.engine import Engine

from taskfleet.config.observability import ObservabilitySettings
from taskfleet.observability.fleet import FleetSources
from taskfleet.observability.queues import read_levels
from taskfleet.results.backlog import stream_health
from taskfleet.results.stream import PERSIST_GROUP, PERSIST_STREAM


@dataclass(frozen=True)
class Check:
    """One readiness check's outcome."""

    name: str
    ok: bool
    detail: str


@dataclass
class Probes:
    """What the checks talk to."""

    sources: FleetSources
    engine: Engine
    app: Celery
    limits: ObservabilitySettings


def _guard(name: str, fn: Callable[[], Check]) -> Check:
    try:
        return fn()
    except Exception as exc:  # a probe that cannot run is a failed check, named
        return Check(name, False, f"{type(exc).__name__}: {exc}")


def _ping(name: str, client: redis.Redis) -> Check:
    client.ping()
    return Check(name, True, "answers")


def _broker(probes: Probes) -> Check:
    """A Redis broker answers a PING; another (RabbitMQ) accepts a connection."""
    if probes.sources.broker is not None:
        return _ping("broker", probes.sources.broker)
    timeout = probes.limits.ready_probe_timeout_s
    with probes.app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
    return Check("broker", True, "accepts a connection")


def _postgres(engine: Engine) -> Check:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return Check("postgres", True, "answers")


def _consumers(probes: Probes) -> Check:
    timeout = probes.limits.ready_probe_timeout_s
    replies: dict[str, Any] = probes.app.control.inspect(timeout=timeout).active_queues() or {}
    counts = dict.fromkeys(probes.sources.queues, 0)
    for queues in replies.values():
        for queue in queues or []:
            if queue.get("name") in counts:
                counts[queue["name"]] += 1
    empty = [q for q, n in counts.items() if n == 0]
    detail = ", ".join(f"{q}: {n}" for q, n in counts.items())
    return Check("consumers", not empty, f"consumers per queue: {detail}")


def _job_age(probes: Probes) -> Check:
    broker = probes.sources.broker
    if broker is None:
        return Check("oldest_job", True, "not measured on RabbitMQ")
    bound = probes.limits.ready_max_job_age_s
    oldest = max((lv.oldest_age_s for lv in read_levels(broker, probes.sources.queues)), default=0)
    return Check(
        "oldest_job", oldest <= bound, f"oldest waiting job {oldest:.1f}s (bound {bound:g}s)"
    )


def _persist_lag(probes: Probes) -> Check:
    health = stream_health(probes.sources.results, PERSIST_STREAM, PERSIST_GROUP, 0)
    lag = health.oldest_entry_age_s or 0.0
    bound = probes.limits.ready_max_persist_lag_s
    return Check(
        "persister_lag", lag <= bound, f"oldest unpersisted result {lag:.1f}s (bound {bound:g}s)"
    )


def run_checks(probes: Probes) -> list[Check]:
    """Every readiness check, in a fixed order (a failing one does not stop the others)."""
    return [
        _guard("broker", lambda: _broker(probes)),
        _guard("redis", lambda: _ping("redis", probes.sources.results)),
        _guard("postgres", lambda: _postgres(probes.engine)),
        _guard("consumers", lambda: _consumers(probes)),
        _guard("oldest_job", lambda: _job_age(probes)),
        _guard("persister_lag", lambda: _persist_lag(probes)),
    ]
