"""Per-process state of one backend: in-flight calls, latency EWMA, counters.

This state is local on purpose: in-flight counts and latencies describe what *this* process
sees, they change on every call, and sharing them would cost a Redis round trip per call.
Only the counters are summed fleet-wide, in batches (:meth:`BackendStats.take_deltas`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from taskfleet.config.balancing import DEFAULT_EWMA_ALPHA, DEFAULT_LATENCY_DECAY_S, BackendSpec

#: The counters summed fleet-wide (``taskfleet backends status``).
COUNTERS = (
    "requests",
    "successes",
    "failures",
    "http_5xx",
    "connect_errors",
    "transport_errors",
    "retries",
)


@dataclass
class BackendStats:
    """One backend as this process sees it; every method is thread-safe.

    The latency estimate is an EWMA of response times (weight ``alpha`` per sample); read
    at a time ``idle`` seconds after its last sample, it is scaled by
    ``exp(-idle / decay)``, so a backend that once was slow and since gets no traffic is
    tried again after a while instead of never (a slow answer puts it back up at once).
    """

    spec: BackendSpec
    clock: Callable[[], float]
    name: str = field(init=False)
    alpha: float = DEFAULT_EWMA_ALPHA
    decay: float = DEFAULT_LATENCY_DECAY_S
    in_flight: int = 0
    latency_s: float | None = None
    last_sample_at: float = 0.0
    consecutive_failures: int = 0
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    _flushed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.name = self.spec.name

    def latency(self, now: float | None = None) -> float:
        """The decayed latency estimate in seconds (0.0 before the first sample)."""
        if self.latency_s is None:
            return 0.0
        idle = max((self.clock() if now is None else now) - self.last_sample_at, 0.0)
        return self.latency_s * math.exp(-idle / self.decay)

    def started(self) -> None:
        """A call to this backend starts."""
        with self._lock:
            self.in_flight += 1
            self.counters["requests"] += 1

    def finished(self, elapsed_s: float, ok: bool, kind: str | None = None) -> int:
        """A call ends after ``elapsed_s``; ``kind`` names a failure's counter.

        Returns:
            The failures in a row so far (0 after a success).
        """
        with self._lock:
            self.in_flight -= 1
            now = self.clock()
            if self.latency_s is None:
                self.latency_s = elapsed_s
            else:
                self.latency_s += self.alpha * (elapsed_s - self.latency_s)
            self.last_sample_at = now
            if ok:
                self.counters["successes"] += 1
                self.consecutive_failures = 0
            else:
                self.counters["failures"] += 1
                if kind is not None:
                    self.counters[kind] += 1
                self.consecutive_failures += 1
            return self.consecutive_failures

    def count(self, counter: str) -> None:
        """Add one to ``counter`` (e.g. ``retries``)."""
        with self._lock:
            self.counters[counter] += 1

    def reset_failures(self) -> None:
        """Forget the failures in a row (after an ejection)."""
        with self._lock:
            self.consecutive_failures = 0

    def take_deltas(self) -> dict[str, int]:
        """The counters' growth since the last call (what to add to the fleet's sums)."""
        with self._lock:
            deltas = {k: v - self._flushed[k] for k, v in self.counters.items()}
            self._flushed = dict(self.counters)
        return {k: v for k, v in deltas.items() if v}

    def snapshot(self) -> dict[str, Any]:
        """This process's view of the backend, as data."""
        with self._lock:
            latency = self.latency()
            return {
                "name": self.spec.name,
                "url": self.spec.url,
                "weight": self.spec.weight,
                "region": self.spec.region,
                "in_flight": self.in_flight,
                "latency_ms": round(latency * 1000, 3),
                "consecutive_failures": self.consecutive_failures,
                **self.counters,
            }
