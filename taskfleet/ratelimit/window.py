"""Sliding windows through the ``limits`` library: its moving window, on its own storage.

``limits``' moving window fits as it is: exact (at most ``count`` hits in any window of
``period`` seconds, from a log of hit times), one atomic script per hit on Redis, with a cost
per hit for batches, and storage chosen by URL like ours (``redis://``, ``memory://``). Its
clock is its own (the caller's ``time.time``), not the limiter's injected one; it cannot be
checked atomically together with a GCRA policy (see :class:`~taskfleet.ratelimit.limiter.Limiter`).
"""

from __future__ import annotations

import time
from typing import Any

from taskfleet.ratelimit.errors import LimitStorageError
from taskfleet.ratelimit.policies import SlidingWindow
from taskfleet.ratelimit.store_base import ALLOWED, REFUSED, Verdict

#: Prefix of the keys ``limits`` keeps on Redis for taskfleet's windows.
WINDOW_PREFIX = "taskfleet:limits:window"


class WindowStore:
    """Moving windows on a ``limits`` storage (imported when the first window is checked)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._limiter: Any = None

    def _strategy(self) -> Any:
        if self._limiter is None:
            from limits.storage import storage_from_string
            from limits.strategies import MovingWindowRateLimiter

            options = {"key_prefix": WINDOW_PREFIX} if self.url.startswith("redis") else {}
            storage = storage_from_string(self.url, wrap_exceptions=True, **options)
            self._limiter = MovingWindowRateLimiter(storage)
        return self._limiter

    def acquire(self, key: str, policy: SlidingWindow, cost: int) -> Verdict:
        """Hit ``policy``'s window under ``key`` with ``cost`` units."""
        from limits import RateLimitItemPerSecond
        from limits.errors import StorageError

        rate = policy.rate
        if rate.period_s != int(rate.period_s):
            raise ValueError(f"a sliding window's period must be whole seconds, got {rate}")
        item = RateLimitItemPerSecond(rate.count, int(rate.period_s))
        try:
            strategy = self._strategy()
            if strategy.hit(item, key, cost=cost):
                return Verdict(ALLOWED)
            reset_at = strategy.get_window_stats(item, key).reset_time
        except StorageError as exc:
            raise LimitStorageError(f"rate-limit window storage failed: {exc}") from exc
        return Verdict(REFUSED, max(reset_at - time.time(), 0.0))
