"""This process's copy of the health marks: keys with expiry times, like the Redis ones.

The health board writes every mark here too, so a process keeps skipping the backends it
found failing while Redis is unreachable (:mod:`taskfleet.balancing.health`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

#: (kind, backend name), e.g. ("down", "eu-1").
Key = tuple[str, str]
NONE: frozenset[str] = frozenset()


class LocalMarks:
    """Marks and counters that expire, on the injected clock; thread-safe."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._until: dict[Key, float] = {}
        self._counts: dict[Key, int] = {}
        self._lock = threading.Lock()

    def set(self, key: Key, seconds: float) -> None:
        """Set ``key`` for ``seconds``."""
        with self._lock:
            self._until[key] = self._clock() + seconds

    def delete(self, key: Key) -> None:
        """Remove ``key`` and its count."""
        with self._lock:
            self._until.pop(key, None)
            self._counts.pop(key, None)

    def incr(self, key: Key, seconds: float) -> int:
        """Add one to ``key``'s count (restarting from 0 if it expired); keep it ``seconds``."""
        with self._lock:
            if self._until.get(key, float("-inf")) <= self._clock():
                self._counts[key] = 0
            self._counts[key] = self._counts.get(key, 0) + 1
            self._until[key] = self._clock() + seconds
            return self._counts[key]

    def until(self, key: Key) -> float | None:
        """When ``key`` expires (None if it is not set)."""
        with self._lock:
            return self._until.get(key)

    def names(self, kinds: Iterable[str]) -> frozenset[str]:
        """The backends with a live mark of any of ``kinds``."""
        if not self._until:  # the usual case: nothing marked
            return NONE
        wanted = set(kinds)
        now = self._clock()
        with self._lock:
            return frozenset(
                name
                for (kind, name), until in self._until.items()
                if kind in wanted and until > now
            )
