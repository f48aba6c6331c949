"""Breaker state in one process (``memory://``): tests and single-process use.

The same algorithm as ``breaker.lua``, step for step, under one lock, so the behaviour suite
runs unchanged over both storages.
"""

from __future__ import annotations

import threading
from typing import Any

from taskfleet.resilience.storage_base import (
    COUNTER_NAMES,
    NOTHING,
    WINDOW_BUCKETS,
    Admission,
    BreakerConfig,
    Pending,
)


def prune_buckets(buckets: dict[int, list[int]], bucket: int) -> None:
    """Drop the buckets older than the window (at most ``WINDOW_BUCKETS + 1`` stay)."""
    for old in [b for b in buckets if b <= bucket - WINDOW_BUCKETS]:
        del buckets[old]


class MemoryStorage:
    """State in this process only (tests, single-process use); same algorithm as the Lua."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, Any]] = {}

    def _get(self, name: str) -> dict[str, Any]:
        return self._data.setdefault(name, {"state": "closed", "fails": 0, "buckets": {}})

    @staticmethod
    def _flush(d: dict[str, Any], config: BreakerConfig, now: float, pending: Pending) -> None:
        ok, admits = pending
        d["n_allowed"] = d.get("n_allowed", 0) + admits
        if ok:
            d["n_successes"] = d.get("n_successes", 0) + ok
            if d["state"] == "closed":
                bucket = int(now // (config.window / WINDOW_BUCKETS))
                prune_buckets(d["buckets"], bucket)
                d["buckets"].setdefault(bucket, [0, 0])[0] += ok

    def acquire(
        self, name: str, config: BreakerConfig, now: float, pending: Pending = NOTHING
    ) -> Admission:
        with self._lock:
            d = self._get(name)
            previous = d["state"]
            self._flush(d, config, now, pending)
            if d["state"] == "open":
                retry_at = d["opened_at"] + config.reset_timeout
                if now < retry_at:
                    self._count(d, "rejected")
                    return Admission(False, "open", retry_at=retry_at, previous=previous)
                d.update(state="half_open", half_at=now, trials=0, trial_ok=0)
            if d["state"] == "half_open":
                if now >= d["half_at"] + config.reset_timeout:
                    d.update(half_at=now, trials=0)  # trials that never reported
                if d["trials"] >= config.half_open_calls:
                    self._count(d, "rejected")
                    retry_at = d["half_at"] + config.reset_timeout
                    return Admission(False, "half_open", retry_at=retry_at, previous=previous)
                d["trials"] += 1
                self._count(d, "allowed")
                return Admission(True, "half_open", trial=True, previous=previous)
            self._count(d, "allowed")
            return Admission(True, "closed", previous=previous, fails=d["fails"])

    def record(
        self,
        name: str,
        config: BreakerConfig,
        now: float,
        success: bool,
        trial: bool,
        pending: Pending = NOTHING,
    ) -> tuple[str, str]:
        with self._lock:
            d = self._get(name)
            before = d["state"]
            self._flush(d, config, now, pending)
            self._count(d, "successes" if success else "failures")
            if before == "half_open":
                if not success:
                    d.update(state="open", opened_at=now, buckets={}, fails=0)
                    self._count(d, "opened")
                elif trial:
                    d["trial_ok"] += 1
                    if d["trial_ok"] >= config.half_open_calls:
                        d.update(state="closed", fails=0, buckets={})
            elif before == "closed":
                width = config.window / WINDOW_BUCKETS
                bucket = int(now // width)
                buckets: dict[int, list[int]] = d["buckets"]
                prune_buckets(buckets, bucket)
                calls_fails = buckets.setdefault(bucket, [0, 0])
                calls_fails[0] += 1
                d["fails"] = 0 if success else d["fails"] + 1
                if not success:
                    calls_fails[1] += 1
                    calls = sum(c for c, _ in buckets.values())
                    fails = sum(f for _, f in buckets.values())
                    rate_trips = calls >= config.min_calls and fails >= config.failure_rate * calls
                    if d["fails"] >= config.fail_max or rate_trips:
                        d.update(state="open", opened_at=now, buckets={}, fails=0)
                        self._count(d, "opened")
            return before, d["state"]

    @staticmethod
    def _count(d: dict[str, Any], counter: str) -> None:
        d[f"n_{counter}"] = d.get(f"n_{counter}", 0) + 1

    def snapshot(self, name: str) -> dict[str, Any]:
        with self._lock:
            d = self._get(name)
            return {"state": d["state"]} | {c: d.get(f"n_{c}", 0) for c in COUNTER_NAMES}

    def reset(self, name: str) -> None:
        with self._lock:
            self._data.pop(name, None)
