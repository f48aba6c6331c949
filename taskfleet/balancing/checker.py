"""Active health checks: probe every backend's health path, mark it down or up fleet-wide.

A probe passes on an answer below 500 within ``health_timeout``. After
``unhealthy_threshold`` failed probes in a row the backend is marked down in the fleet's
health board (renewed by every further failed probe); after ``healthy_threshold`` passed
ones in a row its mark is cleared, for every process. :meth:`HealthChecker.check` runs one
round on demand; :meth:`HealthChecker.start` runs rounds every ``health_interval`` in a
daemon thread, which also adds the balancer's counters to the fleet's sums.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import httpx

from taskfleet.balancing.balancer import Balancer
from taskfleet.outbound import OutboundRefused

log = logging.getLogger(__name__)
SERVER_ERROR = 500
JOIN_TIMEOUT_S = 5.0


class HealthChecker:
    """Probes a balancer's backends through the caller's ``httpx.Client``."""

    def __init__(self, balancer: Balancer, http: httpx.Client) -> None:
        self.balancer = balancer
        self.http = http
        self._passed: dict[str, int] = dict.fromkeys(balancer.by_name, 0)
        self._failed: dict[str, int] = dict.fromkeys(balancer.by_name, 0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def probe(self, name: str) -> str | None:
        """Probe one backend now; the reason it failed, or None if it passed."""
        settings = self.balancer.settings
        url = self.balancer.by_name[name].spec.url + settings.health_path
        try:
            response = self.http.get(url, timeout=settings.health_timeout)
        except (httpx.HTTPError, OutboundRefused) as exc:
            return f"health check: {type(exc).__name__}"
        if response.status_code >= SERVER_ERROR:
            return f"health check: HTTP {response.status_code}"
        return None

    def check(self) -> dict[str, Any]:
        """One round: probe every backend, update the marks; what each probe found."""
        settings = self.balancer.settings
        board = self.balancer.board
        found: dict[str, Any] = {}
        for name in self.balancer.by_name:
            reason = self.probe(name)
            found[name] = reason or "ok"
            if reason is None:
                self._failed[name] = 0
                self._passed[name] += 1
                if self._passed[name] >= settings.healthy_threshold and name in board.down():
                    board.mark_up(name)
                    log.info("backend %s/%s is up again", self.balancer.set_name, name)
            else:
                self._passed[name] = 0
                self._failed[name] += 1
                if self._failed[name] >= settings.unhealthy_threshold:
                    if self._failed[name] == settings.unhealthy_threshold:
                        log.warning(
                            "backend %s/%s is down: %s", self.balancer.set_name, name, reason
                        )
                    board.mark_down(name, reason)
        return found

    def start(self) -> HealthChecker:
        """Run a round every ``health_interval`` in a daemon thread (first one at once)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name=f"health-{self.balancer.set_name}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread (after its current round) and flush the counters once more."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(JOIN_TIMEOUT_S)
            self._thread = None
        self.balancer.flush()

    def __enter__(self) -> HealthChecker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        interval = self.balancer.settings.health_interval
        while not self._stop.is_set():
            try:
                self.check()
                self.balancer.flush()
            except Exception:  # a bug here must not end the checks for good
                log.exception("backend health check round failed")
            self._stop.wait(interval)
