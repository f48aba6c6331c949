"""What ``taskfleet limits status`` shows: counters per client, kind and queue, the limits
configured, and each bounded queue's current reading (backlog, head age, shedding or not)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis

from taskfleet.config.limits import LimitSettings
from taskfleet.ratelimit.admission import OverloadGate
from taskfleet.ratelimit.enqueue import client_policy
from taskfleet.ratelimit.limiter import STATE_PREFIX, STATS_PREFIX
from taskfleet.ratelimit.redis_store import RedisGcraStore

#: Counter fields, in the order they are shown.
COUNTERS = ("allowed", "refused", "started", "deferred", "shed")


@dataclass
class ScopeStatus:
    """One client, kind or queue: its counters, its limits, how long its buckets stay busy."""

    scope: str
    counters: dict[str, int]
    limits: dict[str, str] = field(default_factory=dict)
    #: Per context (enqueue, execution): seconds until its bucket is full again (0: idle).
    busy_s: dict[str, float] = field(default_factory=dict)


def scope_status(
    client: redis.Redis, settings: LimitSettings, scope: str, store: RedisGcraStore
) -> ScopeStatus:
    """The status of one scope (``client:<id>``, ``kind:<kind>``, ``queue:<name>``)."""
    status = ScopeStatus(scope, store.counters(STATS_PREFIX + scope))
    if scope.startswith("client:"):
        client_id = scope.removeprefix("client:")
        for context, table in (("enqueue", settings.enqueue), ("execution", settings.execution)):
            policy = client_policy(table, client_id)
            if policy is not None:
                status.limits[context] = repr(policy)
    for context in ("enqueue", "execution"):
        ttl_ms = int(client.pttl(f"{STATE_PREFIX}{context}:{scope}"))
        if ttl_ms > 0:
            status.busy_s[context] = ttl_ms / 1000
    return status


def limits_status(
    client: redis.Redis,
    settings: LimitSettings,
    queues: list[str],
    only_client: str | None = None,
) -> dict[str, Any]:
    """Everything ``limits status`` shows, as plain data (``only_client``: that client's)."""
    store = RedisGcraStore(client)
    if only_client is not None:
        scopes = [f"client:{only_client}"]
    else:
        scopes = [k.removeprefix(STATS_PREFIX) for k in store.tallies(STATS_PREFIX)]
    report: dict[str, Any] = {
        "scopes": [scope_status(client, settings, s, store).__dict__ for s in scopes],
        "fallback": settings.fallback,
    }
    if only_client is None:
        report["tables"] = {"enqueue": settings.enqueue, "execution": settings.execution}
        report["queues"] = queue_readings(client, settings, queues)
    return report


def queue_readings(
    client: redis.Redis, settings: LimitSettings, queues: list[str]
) -> dict[str, dict[str, Any]]:
    """Each queue's backlog and head age now, and whether admission control sheds there."""
    gate = OverloadGate(
        client,
        queues,
        max_backlog=settings.overload_backlog,
        max_age=settings.overload_age,
        admit_priority=settings.overload_admit_priority,
        refresh_s=0.0,
        retry_after=settings.overload_retry_after,
        counter_ttl=settings.counter_ttl,
    )
    readings = gate.readings()
    return {
        queue: {
            "backlog": reading.backlog,
            "head_age_s": reading.age,
            "shedding": settings.overload_bounded and gate.overloaded(queue),
        }
        for queue, reading in readings.items()
    }
