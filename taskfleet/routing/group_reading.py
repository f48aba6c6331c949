"""What a worker group's queue looks like to a producer: one reading, and who takes it.

A leaf module: the router (:mod:`taskfleet.routing.groups`) and the readers of brokers other
than Redis (:mod:`taskfleet.routing.amqp_groups`) both import it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple


class GroupReading(NamedTuple):
    """One group queue: messages waiting, its oldest head's age (s), its live consumers."""

    backlog: int
    age: float
    consumers: int


#: Reads the given group queues (a broker's way of taking a reading).
GroupReader = Callable[[Sequence[str]], dict[str, GroupReading]]
