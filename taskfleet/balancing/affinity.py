"""Sticky sessions: calls with the same affinity key go to the same backend (uhashring).

The ring is built over the whole declared set (weights give a backend proportionally more
points), not over the live backends: a key whose backend is down moves to the next backend
on the ring while it is down and comes back to its own when it recovers, and keys of other
backends do not move at all. Calls without a key go to the ``fallback`` strategy.
"""

from __future__ import annotations

from collections.abc import Sequence

from uhashring import HashRing

from taskfleet.balancing.stats import BackendStats
from taskfleet.balancing.strategies import RoundRobin, Strategy
from taskfleet.config.balancing import BackendSpec

#: Points on the ring per unit of weight (uhashring's default is 160 per node).
VNODES_PER_WEIGHT = 160


class Affinity:
    """Consistent-hash affinity over a backend set, with a strategy for keyless calls."""

    def __init__(self, backends: Sequence[BackendSpec], fallback: Strategy | None = None) -> None:
        self._ring = HashRing(
            nodes={
                spec.name: {"vnodes": VNODES_PER_WEIGHT, "weight": spec.weight} for spec in backends
            }
        )
        self._fallback: Strategy = fallback or RoundRobin()

    def owner(self, key: str) -> str:
        """The backend that owns ``key`` when every backend is up."""
        return str(self._ring.get_node(key))

    def pick(self, candidates: Sequence[BackendStats], key: str | None = None) -> BackendStats:
        """The first live backend on the ring from ``key``'s point (the fallback's if no key)."""
        if key is None:
            return self._fallback.pick(candidates, key)
        live = {stats.name: stats for stats in candidates}
        for name in self._ring.iterate_nodes(key):
            if name in live:
                return live[name]
        return self._fallback.pick(candidates, key)
