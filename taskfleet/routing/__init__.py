"""Queues, dead-letter queues, priorities and the job-kind routing table."""

from __future__ import annotations

from taskfleet.routing.priority import (
    DEFAULT_PRIORITY,
    MAX_PRIORITY,
    MIN_PRIORITY,
    PRIORITY_LEVELS,
    PriorityError,
    parse_priority,
)
from taskfleet.routing.topology import Pool, Topology, UnknownJobKind, pool_for_kind

__all__ = [
    "DEFAULT_PRIORITY",
    "MAX_PRIORITY",
    "MIN_PRIORITY",
    "PRIORITY_LEVELS",
    "Pool",
    "PriorityError",
    "Topology",
    "UnknownJobKind",
    "parse_priority",
    "pool_for_kind",
]
