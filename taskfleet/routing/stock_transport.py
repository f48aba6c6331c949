"""Stock kombu's Redis transport, serving the most urgent priority first: the fallback.

``TASKFLEET_FAST_TRANSPORT=false`` runs the workers on this transport instead of
``taskfleet.routing.transport``, whose fast paths (merged and batched unacked bookkeeping,
atomic fetch, reply skipping, owner-tagged deliveries) rely on private internals of kombu
and redis-py. It keeps exactly one change to stock kombu, made through public API only, so
that switching does not change what users see: **priority order**. Stock kombu on Redis
serves sub-list 0 first; taskfleet's 9 is the most urgent on every broker
(``taskfleet.routing.priority``). Producers are unchanged either way (a message of priority
``n`` goes to the sub-list of step ``n``); only the order the consumer reads them in flips.

Everything else is stock kombu: BRPOP, then a separate synchronous write recording the
delivery as unacked, and a synchronous removal on ack. A worker that dies holding
deliveries has them restored by kombu's visibility-timeout restore, not within seconds.
"""

from __future__ import annotations

from bisect import bisect
from typing import Any

from kombu.transport import redis as kombu_redis

__all__ = ["STOCK_TRANSPORT_PATH", "Channel", "Transport"]

STOCK_TRANSPORT_PATH = "taskfleet.routing.stock_transport:Transport"


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    """kombu's Redis channel, reading the priority sub-lists from the most urgent down."""

    priority_steps: list[int]
    #: The configured steps in ascending order, for :meth:`priority`'s search.
    ascending_priority_steps: list[int]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ascending_priority_steps = sorted(set(self.priority_steps))
        # kombu's BRPOP, basic_get, size and purge walk the sub-lists in this order.
        self.priority_steps = sorted(self.ascending_priority_steps, reverse=True)

    def priority(self, n: int) -> int:
        """The sub-list step a message priority lands in (the same mapping as stock kombu,
        whose search needs the steps ascending)."""
        steps = self.ascending_priority_steps
        return int(steps[max(bisect(steps, n) - 1, 0)])


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel
