"""The autoscaler's shared state in Redis: lock, tick gate, memory, sizes, decision log.

* ``lock`` -- held while a tick runs (redis-py's ``Lock``: token + expiry, released only by
  its owner), so a tick that overruns does not overlap the next.
* ``gate`` -- ``SET NX PX`` for most of an interval after a decision, so two beats started
  by mistake make one decision per tick between them.
* ``memory`` -- per-pool cooldown times, trend points and completion counters (JSON).
* ``sizes`` -- the size the autoscaler last set on each prefork worker (keyed by hostname,
  checked against the worker's pid): prefork's ``stats()`` keeps reporting the start-up
  ``-c`` after ``pool_grow``.
  A host the autoscaler has not seen for ``SIZE_FORGET_S`` is gone and its entry dropped
  (the tick keeps when it last saw each host in ``memory``), so worker churn does not grow it.
* ``log`` -- the decision log, a capped list (newest first, ``TASKFLEET_AUTOSCALE_HISTORY_CAP``
  entries); ``replicas`` -- desired hosts.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import redis
from redis.lock import Lock

from taskfleet.scheduler.model import PoolMemory, TrendPoint

KEY_PREFIX = "taskfleet:autoscale:"
LOCK_KEY = KEY_PREFIX + "lock"
GATE_KEY = KEY_PREFIX + "gate"
MEMORY_KEY = KEY_PREFIX + "memory"
SIZES_KEY = KEY_PREFIX + "sizes"
LOG_KEY = KEY_PREFIX + "log"
REPLICAS_KEY = KEY_PREFIX + "replicas"
#: Fraction of an interval during which a second decision is refused.
GATE_FRACTION = 0.8
#: The tick lock expires after this many intervals even if its holder died.
LOCK_INTERVALS = 3.0
MIN_LOCK_S = 10.0
#: A worker absent from this many seconds of ticks is gone: its remembered size is dropped.
SIZE_FORGET_S = 3600.0


class AutoscaleStore:
    """Reads and writes every autoscaler key on one Redis client."""

    def __init__(self, client: redis.Redis, interval: float) -> None:
        """Bind to ``client``; ``interval`` sizes the gate and the lock's expiry."""
        self.client = client
        self.interval = interval

    def tick_lock(self) -> Lock:
        """The fleet-wide tick lock (acquire non-blocking; it expires on its own)."""
        timeout = max(MIN_LOCK_S, self.interval * LOCK_INTERVALS)
        lock: Lock = self.client.lock(LOCK_KEY, timeout=timeout, blocking=False)
        return lock

    def open_gate(self, tick_id: str) -> bool:
        """Claim this tick's decision; False if another tick decided less than a tick ago."""
        ttl_ms = max(1, int(self.interval * GATE_FRACTION * 1000))
        return bool(self.client.set(GATE_KEY, tick_id, nx=True, px=ttl_ms))

    def load_memory(self) -> dict[str, Any]:
        """Per-pool memory and counters from the previous tick."""
        raw = self.client.get(MEMORY_KEY)
        return json.loads(raw) if raw else {}

    def save_memory(self, data: dict[str, Any]) -> None:
        """Store the memory for the next tick."""
        self.client.set(MEMORY_KEY, json.dumps(data))

    def prefork_sizes(self) -> dict[str, tuple[int, int]]:
        """``{hostname: (pid, size)}`` the autoscaler last set on prefork workers."""
        raw = self.client.hgetall(SIZES_KEY)
        out: dict[str, tuple[int, int]] = {}
        for host, value in raw.items():
            pid, size = json.loads(value)
            out[host.decode() if isinstance(host, bytes) else str(host)] = (int(pid), int(size))
        return out

    def set_prefork_size(self, hostname: str, pid: int, size: int) -> None:
        """Remember the size just set on a prefork worker."""
        self.client.hset(SIZES_KEY, hostname, json.dumps([pid, size]))

    def forget_sizes(self, hostnames: list[str]) -> None:
        """Drop the sizes remembered for workers that are gone."""
        if hostnames:
            self.client.hdel(SIZES_KEY, *hostnames)

    def append_log(self, entry: dict[str, Any], cap: int) -> None:
        """Add a decision to the log, keeping the newest ``cap`` entries."""
        pipe = self.client.pipeline(transaction=True)
        pipe.lpush(LOG_KEY, json.dumps(entry, default=str))
        pipe.ltrim(LOG_KEY, 0, cap - 1)
        pipe.execute()

    def history(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest ``limit`` decisions, newest first."""
        return [json.loads(item) for item in self.client.lrange(LOG_KEY, 0, limit - 1)]

    def set_replicas(self, replicas: dict[str, int]) -> None:
        """Publish the desired hosts per pool (read by metrics, KEDA, HPA)."""
        if replicas:
            self.client.hset(REPLICAS_KEY, mapping={k: str(v) for k, v in replicas.items()})

    def replicas(self) -> dict[str, int]:
        """The desired hosts per pool last published."""
        raw = self.client.hgetall(REPLICAS_KEY)
        return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}


def memory_from(data: dict[str, Any]) -> PoolMemory:
    """A pool's memory from its stored JSON form."""
    return PoolMemory(
        last_up_at=data.get("last_up_at"),
        last_down_at=data.get("last_down_at"),
        trend=[TrendPoint(**p) for p in data.get("trend", [])],
    )


def memory_to(memory: PoolMemory, keep: int) -> dict[str, Any]:
    """The stored JSON form of a pool's memory, with the newest ``keep`` trend points."""
    return {
        "last_up_at": memory.last_up_at,
        "last_down_at": memory.last_down_at,
        "trend": [asdict(p) for p in memory.trend[-keep:]],
    }


def last_seen(
    seen: dict[str, float], known: list[str], present: list[str], now: float
) -> tuple[dict[str, float], list[str]]:
    """When each host with a remembered size was last seen, and the hosts gone for good.

    Args:
        seen: the previous tick's map (host -> last seen time).
        known: hosts with a remembered size.
        present: hosts that answered this tick.
        now: this tick's time.

    Returns:
        The new map (only hosts with a size, a host first met counted as seen now) and the
        hosts not seen for ``SIZE_FORGET_S``, whose sizes should be forgotten.
    """
    here = set(present)
    updated = {host: now if host in here else seen.get(host, now) for host in known}
    gone = [host for host, at in updated.items() if now - at >= SIZE_FORGET_S]
    for host in gone:
        del updated[host]
    return updated, gone
