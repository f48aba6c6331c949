"""What every circuit-breaker storage shares: the configuration, the answers, the protocol.

:mod:`taskfleet.resilience.storage` (Redis, and the choice by URL) and
:mod:`taskfleet.resilience.memory_storage` both build on this module, which imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

#: Sliding-window resolution: the failure-rate window is kept in this many buckets.
WINDOW_BUCKETS = 10
#: Counters every storage keeps per breaker.
COUNTER_NAMES = ("allowed", "rejected", "successes", "failures", "opened")


class StorageError(RuntimeError):
    """The breaker storage is unreachable or failed."""


@dataclass(frozen=True)
class BreakerConfig:
    """When a breaker opens and how it recovers.

    Attributes:
        fail_max: consecutive failures that open it.
        failure_rate: failure ratio over the window that opens it (with ``min_calls``).
        window: sliding window length in seconds (``WINDOW_BUCKETS`` buckets).
        min_calls: calls in the window before the rate counts.
        reset_timeout: seconds open before trial calls are let through.
        half_open_calls: trial calls admitted at once; that many successes close it.
    """

    fail_max: int = 5
    failure_rate: float = 0.5
    window: float = 30.0
    min_calls: int = 10
    reset_timeout: float = 30.0
    half_open_calls: int = 1

    def argv(self) -> list[float | int]:
        """The configuration as Lua arguments."""
        return [
            self.fail_max,
            self.failure_rate,
            self.window,
            self.min_calls,
            self.reset_timeout,
            self.half_open_calls,
        ]


class Pending(NamedTuple):
    """What a process counted locally since its last storage call (sent with the next one)."""

    #: Successes in the closed state not yet recorded.
    successes: int = 0
    #: Calls admitted from the process's lease (counted as allowed).
    admits: int = 0


NOTHING = Pending()


@dataclass(frozen=True)
class Admission:
    """The answer to "may this call go through?"."""

    allowed: bool
    state: str
    trial: bool = False
    retry_at: float = 0.0
    previous: str = ""
    #: Consecutive failures so far (closed state): 0 means a success changes nothing at once.
    fails: int = 0


class BreakerStorage(Protocol):
    """Atomic breaker transitions over some shared state."""

    def acquire(
        self, name: str, config: BreakerConfig, now: float, pending: Pending = NOTHING
    ) -> Admission:
        """Admit or reject one call (may move open -> half_open).

        ``pending``: what the caller counted locally since its last storage call, added
        first (so a healthy call costs at most one round trip, and none under a lease).
        """

    def record(
        self,
        name: str,
        config: BreakerConfig,
        now: float,
        success: bool,
        trial: bool,
        pending: Pending = NOTHING,
    ) -> tuple[str, str]:
        """Record a call's outcome, after the pending counts; returns (before, after) states."""

    def snapshot(self, name: str) -> dict[str, Any]:
        """State and counters, for inspection."""

    def reset(self, name: str) -> None:
        """Forget a breaker (closed, counters zero)."""
