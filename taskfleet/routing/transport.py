"""Kombu's Redis transport, consuming the most urgent priority sub-list first.

Stock kombu on Redis serves priority 0 first, the opposite of RabbitMQ. Rather than making
producers invert numbers (which bare ``send_task`` callers in other languages would get
wrong), the consuming side reads the sub-lists from 9 down to 0. Publishing is unchanged,
so stock kombu producers stay compatible. Kombu has no option for this order, hence a
subclass of two attributes rather than a hand-written transport.
"""

from __future__ import annotations

from bisect import bisect
from typing import Any

from kombu.transport import redis as kombu_redis

from taskfleet.routing.priority import MAX_PRIORITY, MIN_PRIORITY

ALL_PRIORITY_STEPS = list(range(MIN_PRIORITY, MAX_PRIORITY + 1))
TRANSPORT_PATH = "taskfleet.routing.transport:Transport"


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    """A Redis channel whose BRPOP lists the most urgent sub-list first."""

    priority_steps: list[int]
    _ascending_steps: list[int]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        configured: list[int] = list(self.priority_steps)
        self._ascending_steps = sorted(set(configured))
        # kombu's BRPOP (and basic_get) try the keys in this order: most urgent first.
        self.priority_steps = sorted(self._ascending_steps, reverse=True)

    def priority(self, n: int) -> int:
        """The sub-list step a message priority lands in (same mapping as stock kombu)."""
        steps = self._ascending_steps
        return int(steps[max(bisect(steps, n) - 1, 0)])


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    """Redis transport using :class:`Channel`."""

    Channel = Channel
