"""One autoscaler tick: lock, gate, measure, decide, act, log. Never raises on a fault."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import LockError

from taskfleet.config.app_settings import settings_of
from taskfleet.config.autoscale import AutoscaleSettings
from taskfleet.routing.topology import Topology
from taskfleet.scheduler.actuate import actuate
from taskfleet.scheduler.measure import measure
from taskfleet.scheduler.model import TrendPoint
from taskfleet.scheduler.policy import decide
from taskfleet.scheduler.slots import SlotRegistry
from taskfleet.scheduler.store import AutoscaleStore, last_seen, memory_from, memory_to

log = logging.getLogger(__name__)
#: Faults that skip a tick (logged) instead of crashing the worker running it.
TRANSIENT_FAULTS = (BrokerError, redis.RedisError, OSError, TimeoutError)


def run_tick(
    app: Celery, settings: AutoscaleSettings, client: redis.Redis, now: float | None = None
) -> dict[str, Any]:
    """Run one tick against the fleet ``app`` talks to; returns the log entry or why it skipped.

    Args:
        app: The taskfleet Celery app (its settings name the queues).
        settings: The autoscaler settings.
        client: Redis holding the autoscaler's state (lock, gate, memory, log).
        now: Wall-clock time of the tick (tests pass it; default ``time.time()``).
    """
    store = AutoscaleStore(client, settings.interval)
    tick_id = uuid.uuid4().hex[:12]
    try:
        lock = store.tick_lock()
        if not lock.acquire():
            log.info("autoscale: tick %s skipped, the previous tick still runs", tick_id)
            return {"status": "skipped", "reason": "previous tick still running"}
    except TRANSIENT_FAULTS as exc:
        log.warning("autoscale: tick %s skipped, Redis unreachable: %s", tick_id, exc)
        return {"status": "skipped", "reason": f"redis unreachable: {exc}"}
    try:
        if not store.open_gate(tick_id):
            return {"status": "skipped", "reason": "another tick decided less than a tick ago"}
        return _decide_and_act(app, settings, store, tick_id, now or time.time())
    except TRANSIENT_FAULTS as exc:
        log.warning("autoscale: tick %s skipped, broker or Redis unreachable: %s", tick_id, exc)
        entry = {"at": now or time.time(), "tick": tick_id, "status": "skipped", "reason": str(exc)}
        with contextlib.suppress(*TRANSIENT_FAULTS):
            store.append_log(entry, settings.history_cap)
        return entry
    finally:
        with contextlib.suppress(LockError, *TRANSIENT_FAULTS):
            lock.release()


def _decide_and_act(
    app: Celery, settings: AutoscaleSettings, store: AutoscaleStore, tick_id: str, now: float
) -> dict[str, Any]:
    stored = store.load_memory()
    topology = Topology.from_settings(settings_of(app))
    sizes = store.prefork_sizes()
    groups = SlotRegistry(store.client).groups(now)
    samples, counters = measure(
        app, topology, settings.inspect_timeout, now, sizes, stored.get("counters", {}), groups
    )
    present = [w.hostname for sample in samples.values() for w in sample.workers]
    seen, gone = last_seen(stored.get("seen", {}), list(sizes), present, now)
    store.forget_sizes(gone)
    entry: dict[str, Any] = {
        "at": now,
        "tick": tick_id,
        "status": "decided",
        "dry_run": settings.dry_run,
        "pools": {},
    }
    memories = stored.get("pools", {})
    replicas: dict[str, int] = {}
    for pool, sample in samples.items():
        memory = memory_from(memories.get(pool, {}))
        decision = decide(
            sample,
            memory,
            settings.limits(pool),
            hysteresis=settings.hysteresis,
            up_cooldown=settings.up_cooldown,
            down_cooldown=settings.down_cooldown,
            horizon=settings.predict_horizon,
        )
        result: dict[str, Any] = {}
        if decision.action != "hold" and not settings.dry_run:
            result = actuate(app, decision, sample.workers, store, settings.inspect_timeout)
            applied = sum(r["applied"] for r in result.values())
            if applied > 0:
                memory.last_up_at = now
            elif applied < 0:
                memory.last_down_at = now
        elif settings.dry_run and decision.action != "hold":
            result = {"dry_run": "not applied"}
        memory.trend.append(TrendPoint(now, sample.depth, sample.arrival_rate))
        memories[pool] = memory_to(memory, settings.trend_samples)
        replicas[pool] = decision.desired_replicas
        entry["pools"][pool] = {
            "inputs": sample.as_dict(),
            "decision": decision.as_dict(),
            "result": result,
        }
        if decision.action != "hold":
            log.info(
                "autoscale %s: %s %d -> %d (%s)",
                pool,
                decision.action,
                decision.current,
                decision.target,
                decision.reason,
            )
    store.save_memory({"pools": memories, "counters": counters, "seen": seen})
    store.set_replicas(replicas)
    store.append_log(entry, settings.history_cap)
    return entry
