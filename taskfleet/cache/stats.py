"""Per-tier counters and read latency, cheap enough to update on every call."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

#: Latency samples kept per tier for percentiles (a ring: old samples fall out).
LATENCY_WINDOW = 2048
NS_PER_US = 1000.0


@dataclass
class TierStats:
    """Counters of one tier: hits, misses, back-fills, evictions, errors, read latency."""

    name: str
    hits: int = 0
    misses: int = 0
    backfills: int = 0
    evictions: int = 0
    errors: int = 0
    reads: int = 0
    read_ns_total: int = 0
    _samples: deque[int] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record_read(self, elapsed_ns: int, hits: int, misses: int) -> None:
        """Account one read call that found ``hits`` keys and missed ``misses``."""
        with self._lock:
            self.hits += hits
            self.misses += misses
            self.reads += 1
            self.read_ns_total += elapsed_ns
            self._samples.append(elapsed_ns)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy: counts, hit ratio and read latency in microseconds."""
        with self._lock:
            samples = sorted(self._samples)
            lookups = self.hits + self.misses
            return {
                "hits": self.hits,
                "misses": self.misses,
                "hit_ratio": round(self.hits / lookups, 4) if lookups else None,
                "backfills": self.backfills,
                "evictions": self.evictions,
                "errors": self.errors,
                "reads": self.reads,
                "latency_us": {
                    "mean": round(self.read_ns_total / self.reads / NS_PER_US, 2)
                    if self.reads
                    else None,
                    "p50": _pct(samples, 0.50),
                    "p99": _pct(samples, 0.99),
                },
            }

    def reset(self) -> None:
        """Zero every counter."""
        with self._lock:
            self.hits = self.misses = self.backfills = self.evictions = self.errors = 0
            self.reads = self.read_ns_total = 0
            self._samples.clear()


def _pct(samples: list[int], q: float) -> float | None:
    if not samples:
        return None
    return round(samples[min(len(samples) - 1, int(q * len(samples)))] / NS_PER_US, 2)
