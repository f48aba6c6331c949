"""GCRA state in this process (``memory://``, and the ``local`` fallback when Redis is down).

The same algorithm as ``gcra.lua``, step for step, under one lock: a limit kept here holds
for this process only (N processes admit up to N times the rate).
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Sequence

from taskfleet.ratelimit.store_base import (
    ALLOWED,
    ON_SLOT,
    REFUSED,
    RESERVED,
    SLOT_GRACE_S,
    TALLY_CAP,
    GcraCall,
    Verdict,
)

#: Expired entries are swept when the table grows past this many keys.
SWEEP_AT = 10_000
#: Float noise below this never refuses a call that exactly fits (as in gcra.lua).
EPSILON_S = 1e-6


class MemoryGcraStore:
    """GCRA calls applied to dictionaries under a lock. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: key -> (theoretical arrival time, expires at)
        self._tats: dict[str, tuple[float, float]] = {}
        #: slot key -> (slot time, expires at)
        self._slots: dict[str, tuple[float, float]] = {}
        self._tallies: dict[str, Counter[str]] = {}

    def __len__(self) -> int:
        """State keys held (expired ones included until swept)."""
        return len(self._tats)

    def _sweep(self, now: float) -> None:
        for table in (self._tats, self._slots):
            if len(table) > SWEEP_AT:
                for key in [k for k, v in table.items() if _expiry(v) <= now]:
                    del table[key]

    def _tally(self, call: GcraCall, field: str, cost: int) -> None:
        for key in call.tally.keys:  # re-inserted: the table is ordered by last bump
            counter = self._tallies.pop(key, None) or Counter()
            counter[field] += cost
            self._tallies[key] = counter
        while len(self._tallies) > TALLY_CAP:
            del self._tallies[next(iter(self._tallies))]

    def acquire(
        self,
        call: GcraCall,
        now: float,
        cost: int = 1,
        push: Sequence[tuple[str, Sequence[bytes | str]]] = (),
    ) -> Verdict:
        """See :meth:`taskfleet.ratelimit.store_base.GcraStore.acquire` (never pushes)."""
        tally = call.tally
        with self._lock:
            self._sweep(now)
            slot, expires = self._slots.pop(call.slot_key, (-math.inf, -math.inf))
            if expires > now and now <= slot + call.late_s:
                self._tally(call, tally.allowed, cost)
                return Verdict(ON_SLOT)
            tats = []
            at = now
            for key, policy in zip(call.keys, call.policies, strict=True):
                tat, expires = self._tats.get(key, (now, now))
                tat = now if expires <= now else max(tat, now)
                tats.append(tat)
                at = max(at, tat + (cost - 1) * policy.rate.interval - policy.tolerance)
            wait = at - now
            if wait > call.horizon + EPSILON_S:
                self._tally(call, tally.refused, cost)
                return Verdict(REFUSED, wait - call.horizon)
            for key, policy, tat in zip(call.keys, call.policies, tats, strict=True):
                new = max(tat, at) + cost * policy.rate.interval
                self._tats[key] = (new, new)
            if wait <= 0:
                self._tally(call, tally.allowed, cost)
                return Verdict(ALLOWED)
            if call.slot_key:
                self._slots[call.slot_key] = (at, now + wait + SLOT_GRACE_S)
            self._tally(call, tally.reserved, cost)
            return Verdict(RESERVED, wait)

    def counters(self, key: str) -> dict[str, int]:
        """See :meth:`taskfleet.ratelimit.store_base.GcraStore.counters`."""
        with self._lock:
            return dict(self._tallies.get(key, {}))

    def tallies(self, prefix: str) -> list[str]:
        """See :meth:`taskfleet.ratelimit.store_base.GcraStore.tallies`."""
        with self._lock:
            return [k for k in reversed(self._tallies) if k.startswith(prefix)]


def _expiry(value: tuple[float, float]) -> float:
    return value[1]
