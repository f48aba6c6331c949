"""L1: an in-process cache on cachetools (LRU, LFU, FIFO or TTL), sized in entries or bytes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import cachetools

from taskfleet.cache.stats import TierStats
from taskfleet.cache.tiers import compile_glob
from taskfleet.config.cache import DEFAULT_L1_MAX_ENTRIES, DEFAULT_L1_TTL_S, L1Policy

POLICIES: dict[str, type[cachetools.Cache[str, Any]]] = {
    "lru": cachetools.LRUCache,
    "lfu": cachetools.LFUCache,
    "fifo": cachetools.FIFOCache,
    "ttl": cachetools.TTLCache,
}
#: Per-entry overhead counted on top of the encoded text when L1 is bounded in bytes.
ENTRY_OVERHEAD_BYTES = 64

Entry = tuple[str, float]  # (JSON text, monotonic deadline)


def _entry_size(entry: Entry) -> int:
    return len(entry[0]) + ENTRY_OVERHEAD_BYTES


def _counting(base: type[cachetools.Cache[str, Any]], stats: TierStats) -> Any:
    """A subclass of ``base`` whose capacity evictions are counted in ``stats``."""

    class Counting(base):  # type: ignore[valid-type,misc]
        def popitem(self) -> Any:
            item = super().popitem()
            stats.evictions += 1
            return item

    return Counting


class MemoryTier:
    """A thread-safe in-process tier holding JSON text; every entry expires after ``ttl``."""

    def __init__(
        self,
        *,
        policy: L1Policy = "lru",
        max_entries: int = DEFAULT_L1_MAX_ENTRIES,
        max_bytes: int | None = None,
        ttl: float = DEFAULT_L1_TTL_S,
        timer: Callable[[], float] = time.monotonic,
        name: str = "l1",
    ) -> None:
        """Build the tier; with ``max_bytes`` the bound is on encoded bytes, not entries.

        Raises:
            ValueError: unknown policy.
        """
        if policy not in POLICIES:
            raise ValueError(f"L1 policy must be one of {sorted(POLICIES)}, got {policy!r}")
        self.name = name
        self.stats = TierStats(name)
        self.ttl = ttl
        self.timer = timer
        cls = _counting(POLICIES[policy], self.stats)
        sizing: dict[str, Any] = {"maxsize": max_bytes or max_entries}
        if max_bytes is not None:
            sizing["getsizeof"] = _entry_size
        if policy == "ttl":
            sizing |= {"ttl": ttl, "timer": timer}
        self._data: cachetools.Cache[str, Entry] = cls(**sizing)
        self._lock = threading.RLock()

    def get_text(self, key: str) -> str | None:
        """The text stored under ``key`` if present and unexpired (the fast path)."""
        with self._lock:
            entry = self._data.get(key)
            if entry is not None and entry[1] <= self.timer():
                del self._data[key]
                entry = None
        return None if entry is None else entry[0]

    def get_many(self, keys: list[str]) -> dict[str, str]:
        """The text of each present, unexpired key."""
        found: dict[str, str] = {}
        for key in keys:
            text = self.get_text(key)
            if text is not None:
                found[key] = text
        return found

    def set_many(self, items: Mapping[str, str]) -> None:
        """Store each key's text (a value larger than the whole tier is simply not kept)."""
        deadline = self.timer() + self.ttl
        with self._lock:
            for key, text in items.items():
                try:
                    self._data[key] = (text, deadline)
                except ValueError:  # larger than the tier: caching it would evict everything
                    self._data.pop(key, None)

    def delete(self, keys: list[str]) -> int:
        """Drop keys literally."""
        with self._lock:
            return sum(self._data.pop(key, None) is not None for key in keys)

    def delete_pattern(self, pattern: str) -> int:
        """Drop every key matching a Redis-style glob."""
        regex = compile_glob(pattern)
        with self._lock:
            doomed = [key for key in list(self._data.keys()) if regex.match(key)]
            for key in doomed:
                self._data.pop(key, None)
        return len(doomed)

    def clear(self) -> None:
        """Drop everything."""
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    @property
    def size(self) -> int:
        """Current size in the tier's unit (entries, or bytes when bounded in bytes)."""
        with self._lock:
            return int(self._data.currsize)
