"""Bounded polling: a deadline with fixed or exponential back-off pauses.

Shared by the embedded stack (fast back-off while servers start) and the fleet supervisor.
"""

from __future__ import annotations

import time
from collections.abc import Callable

POLL_INTERVAL_S = 0.1
"""Pause between two checks of a condition that has a deadline."""

BACKOFF_MIN_S = 0.005
"""First pause of an exponential back-off poll."""

BACKOFF_MAX_S = 0.1
"""Longest pause of an exponential back-off poll."""


class Deadline:
    """A point in time polling loops give up at.

    Args:
        timeout: Seconds from now.
    """

    def __init__(self, timeout: float) -> None:
        """Start the clock: the deadline is ``timeout`` seconds from now."""
        self.timeout = timeout
        self.end = time.monotonic() + timeout
        self._delay = BACKOFF_MIN_S

    def remaining(self) -> float:
        """Seconds left (never negative)."""
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        """Whether the deadline has passed."""
        return time.monotonic() >= self.end

    def pause(self, interval: float = POLL_INTERVAL_S) -> None:
        """Sleep ``interval`` seconds, or less if the deadline comes first."""
        time.sleep(min(interval, self.remaining()))

    def backoff(self) -> None:
        """Pause, doubling the pause each call (from :data:`BACKOFF_MIN_S` to the max)."""
        self.pause(self._delay)
        self._delay = min(self._delay * 2, BACKOFF_MAX_S)


def wait_until(predicate: Callable[[], bool], timeout: float, *, backoff: bool = False) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed.

    Args:
        predicate: The condition.
        timeout: Seconds to keep trying.
        backoff: Poll with exponential back-off (fast first checks) instead of a fixed
            :data:`POLL_INTERVAL_S`.

    Returns:
        Whether the condition became true in time.
    """
    deadline = Deadline(timeout)
    while not predicate():
        if deadline.expired():
            return False
        if backoff:
            deadline.backoff()
        else:
            deadline.pause()
    return True
