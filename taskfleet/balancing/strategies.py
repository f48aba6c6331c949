"""Strategies: which of the live backends takes the next call.

Each is a small object with one method, ``pick(candidates, key)``, given the backends that
are up and not excluded (never empty) in their declared order. Strategies keep only their
own cursor or weights; in-flight counts and latencies come from the candidates' stats.
Randomness is injected (``rng``), so tests are deterministic. A strategy is used by one
balancer; its ``pick`` is called under that balancer's lock.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Protocol

from taskfleet.balancing.stats import BackendStats

#: Cost floor of a backend with no latency sample yet (or a decayed one), so the adaptive
#: strategy still compares in-flight counts: 1 ms.
LATENCY_FLOOR_S = 0.001


class Strategy(Protocol):
    """Picks one backend among live candidates."""

    def pick(self, candidates: Sequence[BackendStats], key: str | None = None) -> BackendStats:
        """The backend for the next call (``key``: an affinity key, if the call has one)."""
        ...


class RoundRobin:
    """Each live backend in turn, ignoring weights."""

    def __init__(self) -> None:
        self._next = 0

    def pick(self, candidates: Sequence[BackendStats], key: str | None = None) -> BackendStats:
        """The next backend after the previous pick's position."""
        chosen = candidates[self._next % len(candidates)]
        self._next += 1
        return chosen


class Weighted:
    """Smooth weighted round robin, as nginx: shares match weights, spread evenly in time.

    Every pick adds each candidate's weight to its current score, takes the highest score
    and subtracts the candidates' total weight from it. Weights 5, 1, 1 give
    ``a a b a c a a``, not ``a a a a a b c``.
    """

    def __init__(self) -> None:
        self._current: dict[str, int] = {}

    def pick(self, candidates: Sequence[BackendStats], key: str | None = None) -> BackendStats:
        """The candidate with the highest current score."""
        total = 0
        best: BackendStats | None = None
        best_score = 0
        for stats in candidates:
            weight = stats.spec.weight
            score = self._current.get(stats.name, 0) + weight
            self._current[stats.name] = score
            total += weight
            if best is None or score > best_score:
                best, best_score = stats, score
        assert best is not None
        self._current[best.name] = best_score - total
        return best


class LeastConnections:
    """The fewest in-flight calls per unit of weight; ties go round robin."""

    def __init__(self) -> None:
        self._next = 0

    def pick(self, candidates: Sequence[BackendStats], key: str | None = None) -> BackendStats:
        """The least loaded candidate, scanning from a rotating start."""
        self._next += 1
        return _lowest(candidates, self._next, lambda s: s.in_flight / s.spec.weight)


class LeastResponseTime:
    """The lowest latency EWMA x (in-flight + 1), as nginx's ``least_time``; ties round robin.

    A backend with no sample yet costs 0, so each one is tried once before the estimates
    decide.
    """

    def __init__(self) -> None:
        self._next = 0

    def pick(self, candidates: Sequence[BackendStats], key: str | None = None) -> BackendStats:
        """The candidate with the lowest expected wait."""
        self._next += 1
        now = candidates[0].clock()
        return _lowest(
            candidates, self._next, lambda s: s.latency(now) * (s.in_flight + 1) / s.spec.weight
        )


class Adaptive:
    """Power of two choices, as Envoy's least request: two random candidates, the cheaper wins.

    Cost = (in-flight + 1) x latency EWMA (at least :data:`LATENCY_FLOOR_S`) / weight.
    Sampling two avoids the herd a full scan causes when many processes share stale costs.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(self, candidates: Sequence[BackendStats], key: str | None = None) -> BackendStats:
        """The cheaper of two distinct random candidates (the only one if there is one)."""
        if len(candidates) == 1:
            return candidates[0]
        count = len(candidates)
        first = self._rng.randrange(count)
        second = self._rng.randrange(count - 1)
        second += second >= first  # two distinct draws
        now = candidates[0].clock()
        a, b = candidates[first], candidates[second]
        return a if _cost(a, now) <= _cost(b, now) else b


def _cost(stats: BackendStats, now: float) -> float:
    latency = max(stats.latency(now), LATENCY_FLOOR_S)
    return (stats.in_flight + 1) * latency / stats.spec.weight


def _lowest(
    candidates: Sequence[BackendStats], start: int, cost: Callable[[BackendStats], float]
) -> BackendStats:
    count = len(candidates)
    best = candidates[start % count]
    best_cost = cost(best)
    for offset in range(1, count):
        stats = candidates[(start + offset) % count]
        value = cost(stats)
        if value < best_cost:
            best, best_cost = stats, value
    return best
