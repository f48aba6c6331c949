"""The cache: L1 memory, L2 Redis and L3 Postgres behind one interface.

Reads go down the tiers and back-fill the ones above a hit. Writes go through to L1 and
L2 at once (one Lua call that also publishes the invalidation and appends the write to the
L3 write-behind stream); ``ResultPersister`` later applies the stream to Postgres in
batches. Any subset of tiers works: memory only, Redis only, Postgres only, or all three.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import redis
from sqlalchemy.exc import SQLAlchemyError

from taskfleet.cache.invalidation import InvalidationListener
from taskfleet.cache.l1 import MemoryTier
from taskfleet.cache.l2 import RedisTier
from taskfleet.cache.l3 import PostgresTier
from taskfleet.cache.tiers import CacheUnavailable, check_key, decode, encode
from taskfleet.config.cache import CacheSettings

log = logging.getLogger(__name__)
TierError = (redis.RedisError, SQLAlchemyError, OSError)
#: L1 hits are too fast to time each one (timing would double their cost).
L1_LATENCY_SAMPLE_EVERY = 64
Loader = Callable[[], Mapping[str, Any]]


class TieredCache:
    """Read-through, write-through cache over whichever tiers are given (top first)."""

    def __init__(
        self,
        settings: CacheSettings,
        *,
        l1: MemoryTier | None = None,
        l2: RedisTier | None = None,
        l3: PostgresTier | None = None,
        listen: bool = True,
    ) -> None:
        """Assemble tiers; with L1 and L2, start listening for fleet-wide invalidations."""
        self.settings = settings
        self.l1, self.l2, self.l3 = l1, l2, l3
        self.tiers: list[Any] = [t for t in (l1, l2, l3) if t is not None]
        self.origin = l2.origin if l2 is not None else f"{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._epoch = 0  # bumped by every invalidation; a back-fill racing one is skipped
        self.listener: InvalidationListener | None = None
        if l1 is not None and l2 is not None and listen:
            self.listener = InvalidationListener(
                l2.client,
                l2.channel,
                self.origin,
                drop_keys=self._drop_keys,
                drop_pattern=self._drop_pattern,
                drop_all=self._drop_all,
            )
            self.listener.start()

    # -------------------------------------------------------------- invalidation callbacks

    def _drop_keys(self, keys: list[str]) -> None:
        self._epoch += 1
        if self.l1 is not None:
            self.l1.delete(keys)

    def _drop_pattern(self, pattern: str) -> None:
        self._epoch += 1
        if self.l1 is not None:
            self.l1.delete_pattern(pattern)

    def _drop_all(self) -> None:
        self._epoch += 1
        if self.l1 is not None:
            self.l1.clear()

    # ------------------------------------------------------------------------- reads

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` from the first tier holding it, or ``default``."""
        l1 = self.l1
        if l1 is not None and type(key) is str:  # the hot path: latency sampled 1 in 64
            stats = l1.stats
            if not (stats.hits + stats.misses) % L1_LATENCY_SAMPLE_EVERY:
                start = time.perf_counter_ns()
                text = l1.get_text(key)
                stats.record_read(time.perf_counter_ns() - start, 0, 0)
            else:
                text = l1.get_text(key)
            if text is not None:
                l1.stats.hits += 1  # GIL-atomic enough for a counter; no lock on the hot path
                return decode(text)
            l1.stats.misses += 1
        found = self._read_below([check_key(key)], 0 if l1 is None else 1)
        return decode(found[key]) if key in found else default

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Values of the keys present in any tier (absent keys are left out)."""
        wanted = list(dict.fromkeys(check_key(k) for k in keys))
        return {k: decode(v) for k, v in self._read_below(wanted, 0).items()}

    def _read_below(self, keys: list[str], first: int) -> dict[str, str]:
        found: dict[str, str] = {}
        missing = keys
        epoch = self._epoch
        for level in range(first, len(self.tiers)):
            if not missing:
                break
            tier = self.tiers[level]
            start = time.perf_counter_ns()
            try:
                hits = tier.get_many(missing)
            except TierError as exc:
                tier.stats.errors += 1
                log.warning("cache %s read failed (%s); trying the next tier", tier.name, exc)
                continue
            tier.stats.record_read(
                time.perf_counter_ns() - start, len(hits), len(missing) - len(hits)
            )
            if hits:
                self._backfill(level, hits, epoch)
                found |= hits
                missing = [k for k in missing if k not in hits]
        return found

    def _backfill(self, level: int, hits: dict[str, str], epoch: int) -> None:
        for upper in reversed(self.tiers[:level]):
            try:
                if isinstance(upper, MemoryTier):
                    if self._epoch != epoch:  # an invalidation arrived meanwhile
                        continue
                    upper.set_many(hits)
                else:
                    upper.fill_many(hits)
            except TierError as exc:
                upper.stats.errors += 1
                log.warning("cache %s back-fill failed: %s", upper.name, exc)
                continue
            upper.stats.backfills += len(hits)

    # ------------------------------------------------------------------------ writes

    def set(self, key: str, value: Any) -> None:
        """Store ``value`` in every tier (L3 by write-behind when Redis is present).

        Raises:
            NotSerializable, ValueTooLarge, InvalidKey: bad input, nothing stored.
            CacheUnavailable: Redis (or Postgres without Redis) is down; nothing stored.
        """
        self.set_many({key: value})

    def set_many(self, items: Mapping[str, Any]) -> None:
        """Store several values (see :meth:`set`)."""
        texts = {check_key(k): encode(v, self.settings.max_value_bytes) for k, v in items.items()}
        if self.l1 is not None:
            self.l1.set_many(texts)
        durable = self.l2 if self.l2 is not None else self.l3
        if durable is None:
            return
        try:
            durable.set_many(texts)
        except TierError as exc:
            if self.l1 is not None:
                self.l1.delete(list(texts))
            durable.stats.errors += 1
            raise CacheUnavailable(f"cache write not stored ({durable.name}): {exc}") from exc

    def delete(self, key: str) -> None:
        """Remove ``key`` from every tier and every process's L1 (same as :meth:`invalidate`)."""
        self.invalidate(key)

    def invalidate(self, key: str) -> None:
        """Remove ``key`` (taken literally, glob characters included) everywhere.

        Raises:
            CacheUnavailable: the durable tier is down; other processes were not told.
        """
        keys = [check_key(key)]
        if self.l1 is not None:
            self.l1.delete(keys)
        self._durable("delete", keys)

    def invalidate_pattern(self, pattern: str) -> None:
        """Remove every key matching a Redis glob (``contract:*``) everywhere.

        Raises:
            CacheUnavailable: the durable tier is down.
        """
        if not isinstance(pattern, str) or not pattern:
            raise ValueError("pattern must be a non-empty glob")
        if self.l1 is not None:
            self.l1.delete_pattern(pattern)
        self._durable("delete_pattern", pattern)

    def _durable(self, method: str, arg: Any) -> None:
        durable = self.l2 if self.l2 is not None else self.l3
        if durable is None:
            return
        try:
            getattr(durable, method)(arg)
        except TierError as exc:
            durable.stats.errors += 1
            raise CacheUnavailable(f"cache invalidation failed ({durable.name}): {exc}") from exc

    def warm(self, source: Iterable[str] | Mapping[str, Any] | Loader) -> int:
        """Fill the cache: from a loader (called) or mapping (stored), or by reading keys
        through the tiers so the upper ones are back-filled; returns how many keys were warmed.
        """
        if callable(source):
            source = source()
        if isinstance(source, Mapping):
            self.set_many(source)
            return len(source)
        return len(self.get_many(source))

    # -------------------------------------------------------------------- management

    def stats(self) -> dict[str, Any]:
        """Per-tier counters and read latency (JSON-ready)."""
        out: dict[str, Any] = {t.name: t.stats.snapshot() for t in self.tiers}
        if self.l1 is not None:
            out[self.l1.name] |= {"entries": len(self.l1), "size": self.l1.size}
        if self.listener is not None:
            out["invalidation"] = {
                "received": self.listener.received,
                "resets": self.listener.resets,
                "subscribed": self.listener.subscribed.is_set(),
            }
        return out

    def clear(self) -> None:
        """Empty every tier (tests and benchmarks)."""
        for tier in self.tiers:
            tier.clear()

    def close(self) -> None:
        """Stop the invalidation listener."""
        if self.listener is not None:
            self.listener.stop()
