"""Pings the fleet's workers from a background thread: who is ready, and who went silent.

kombu publishes a ping with ``retry=True``: while the broker is down it would block the
supervisor, which is what has to restart the broker. So pings run in a daemon thread, one
round at a time, each round one broadcast to every worker the supervisor asked about.

A worker whose process lives but whose main loop no longer answers (stopped, deadlocked, a
green worker blocked by a job that never yields) is only seen this way. A round counts as
evidence only when it reached the broker: a round that failed (broker down) says nothing
about the workers, so a broker outage never makes them look silent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from celery import Celery

#: At most one round per this many seconds (a round ends early once every worker answered).
ROUND_INTERVAL_S = 1.0
#: How long a round waits for replies: a busy host answers late, and a late answer is an
#: answer (a round ends as soon as every worker asked has replied).
ROUND_TIMEOUT_S = 2.0


class Pinger:
    """Pings the workers it was asked about; remembers who answered, and when.

    Args:
        app: A Celery app on the fleet's broker.
        timeout: Seconds one round waits for replies (less when all answer).
        clock: Monotonic seconds (tests inject one).
    """

    def __init__(
        self,
        app: Celery,
        timeout: float = ROUND_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Ping nothing yet."""
        self.app = app
        self.timeout = timeout
        self.clock = clock
        self._nodes: set[str] = set()
        self._fresh: set[str] = set()  # answered since last asked (``answered``)
        self._heard_at: dict[str, float] = {}
        self._round_at: float | None = None  # start of the last round that reached the broker
        self._began: float | None = None  # when the last round was started
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def answered(self, nodename: str) -> bool:
        """Whether ``nodename`` answered since it was last asked for; starts a round if not."""
        with self._lock:
            self._nodes.add(nodename)
            if nodename in self._fresh:
                self._fresh.discard(nodename)
                return True
        self.poke()
        return False

    def silent_for(self, nodename: str, since: float) -> float:
        """Seconds of rounds that reached the broker without an answer from ``nodename``,
        counted from its last answer or ``since`` (its start), whichever is later; starts a
        round if none runs."""
        with self._lock:
            self._nodes.add(nodename)
            last_round = self._round_at
            heard = max(self._heard_at.get(nodename, since), since)
        self.poke()
        return 0.0 if last_round is None else max(0.0, last_round - heard)

    def poke(self) -> None:
        """Start a round unless one runs or the last began under ``ROUND_INTERVAL_S`` ago."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            if self._began is not None and self.clock() - self._began < ROUND_INTERVAL_S:
                return
            self._began = self.clock()
            nodes = sorted(self._nodes)
            self._thread = threading.Thread(
                target=self.round, args=(nodes,), name="fleet-ping", daemon=True
            )
            self._thread.start()

    def round(self, nodes: list[str]) -> None:
        """One ping of ``nodes`` (blocking); what it heard is recorded."""
        started = self.clock()
        try:
            replies = self.app.control.ping(
                destination=nodes, timeout=self.timeout, limit=len(nodes)
            )
        except Exception:  # broker trouble: no evidence either way, ask again later
            return
        with self._lock:
            self._round_at = started
            for reply in replies or []:
                for node in reply:
                    self._fresh.add(node)
                    self._heard_at[node] = started
