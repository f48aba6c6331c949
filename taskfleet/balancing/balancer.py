"""The balancer: picks a live backend for a call and keeps the books when the call ends.

No HTTP here (that is :mod:`taskfleet.balancing.client`): :meth:`Balancer.acquire` skips
the backends that are down or ejected fleet-wide (:class:`~taskfleet.balancing.health.
HealthBoard`) and those the call excludes (a retry's first backend), asks the strategy, and
counts the call in flight; :meth:`Balancer.release` records its latency and outcome and
ejects the backend after ``consecutive_failures`` failures in a row (passive outlier
ejection, as Envoy), unless it is the last live one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

import redis

from taskfleet.balancing.health import HealthBoard
from taskfleet.balancing.stats import BackendStats
from taskfleet.balancing.strategies import Strategy
from taskfleet.config.balancing import BackendSpec, BalancingSettings, load_balancing_settings

log = logging.getLogger(__name__)
#: Passive ejection never leaves fewer live backends than this (as Envoy's
#: max_ejection_percent, it keeps a fleet-wide blip from ejecting the whole set); active
#: health checks still mark any backend down.
MIN_LIVE_AFTER_EJECTION = 1


class NoBackendAvailable(RuntimeError):
    """Every backend of the set is down, ejected or excluded; nothing was sent."""


class Balancer:
    """One backend set, a strategy, and this process's books; thread-safe."""

    def __init__(
        self,
        backends: Sequence[BackendSpec],
        strategy: Strategy,
        *,
        redis_client: redis.Redis | None = None,
        settings: BalancingSettings | None = None,
        set_name: str = "default",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not backends:
            raise ValueError("a balancer needs at least one backend")
        self.settings = settings or load_balancing_settings()
        self.set_name = set_name
        self.strategy = strategy
        self.clock = clock
        self.stats = tuple(
            BackendStats(
                spec,
                clock,
                alpha=self.settings.ewma_alpha,
                decay=self.settings.latency_decay,
            )
            for spec in backends
        )
        self.by_name = {stats.name: stats for stats in self.stats}
        self.board = HealthBoard(
            set_name, list(self.by_name), redis_client, self.settings, clock=clock
        )
        self._lock = threading.Lock()

    @classmethod
    def for_set(
        cls,
        set_name: str,
        strategy: Strategy,
        redis_client: redis.Redis | None = None,
        settings: BalancingSettings | None = None,
    ) -> Balancer:
        """A balancer over the set ``set_name`` declared in ``TASKFLEET_BACKENDS``.

        Raises:
            KeyError: no such set is declared.
        """
        settings = settings or load_balancing_settings()
        return cls(
            settings.backend_set(set_name),
            strategy,
            redis_client=redis_client,
            settings=settings,
            set_name=set_name,
        )

    def live(self, exclude: Collection[str] = ()) -> Sequence[BackendStats]:
        """The backends neither down, ejected nor excluded, in declared order."""
        down = self.board.down()
        if not down and not exclude:
            return self.stats
        return [s for s in self.stats if s.name not in down and s.name not in exclude]

    def acquire(self, key: str | None = None, exclude: Collection[str] = ()) -> BackendStats:
        """Pick a backend for a call and count the call in flight.

        Args:
            key: Affinity key (sticky sessions), for strategies that use one.
            exclude: Backends not to use (e.g. the one a retried call failed on).

        Raises:
            NoBackendAvailable: no backend is live.
        """
        candidates = self.live(exclude)
        if not candidates:
            raise NoBackendAvailable(
                f"no live backend in set {self.set_name!r} "
                f"(down or ejected: {sorted(self.board.down()) or '-'}; "
                f"excluded: {sorted(exclude) or '-'})"
            )
        with self._lock:
            chosen = self.strategy.pick(candidates, key)
        chosen.started()
        return chosen

    def release(
        self, stats: BackendStats, elapsed_s: float, ok: bool, kind: str | None = None
    ) -> None:
        """A call on ``stats`` ended; eject its backend after too many failures in a row.

        Args:
            stats: What :meth:`acquire` returned.
            elapsed_s: The call's duration.
            ok: Whether it succeeded (an answer below 500).
            kind: A failure's counter: ``http_5xx`` or ``connect_errors``.
        """
        in_a_row = stats.finished(elapsed_s, ok, kind)
        if in_a_row >= self.settings.consecutive_failures:
            stats.reset_failures()
            if len(self.live((stats.name,))) < MIN_LIVE_AFTER_EJECTION:
                log.warning(
                    "backend %s/%s: %d failures in a row, not ejected: it is the last live one",
                    self.set_name,
                    stats.name,
                    in_a_row,
                )
                return
            seconds = self.board.eject(stats.name, f"{in_a_row} failures in a row ({kind})")
            log.warning(
                "backend %s/%s ejected for %.0fs after %d failures in a row",
                self.set_name,
                stats.name,
                seconds,
                in_a_row,
            )

    def flush(self) -> None:
        """Add this process's counter growth to the fleet's sums in Redis."""
        for stats in self.stats:
            self.board.add_counters(stats.name, stats.take_deltas())

    def snapshot(self) -> dict[str, Any]:
        """This process's view of the set, as data: health mode, and each backend's books."""
        down = self.board.down()
        return {
            "set": self.set_name,
            "health_mode": self.board.mode,
            "backends": [{**s.snapshot(), "live": s.name not in down} for s in self.stats],
        }
