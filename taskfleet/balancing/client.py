"""The client jobs use: an HTTP call to whichever backend of a set the balancer picks.

The ``httpx.Client`` is the caller's (by default :func:`taskfleet.outbound.outbound_client`,
so a backend is reached only if its address is public or ``TASKFLEET_OUTBOUND_ALLOW`` opens
it): its timeouts, its connection pool and its transport apply to every call, and the
balancer adds only the choice of backend, the books and one retry. A backend the outbound
policy refuses counts as one that could not be connected to.

A call is retried once, on another live backend, when that is safe: for an idempotent
method (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) after a transport error or a 5xx answer,
and for any method when the connection could not be opened (nothing was sent).
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from taskfleet.balancing.balancer import Balancer
from taskfleet.balancing.stats import BackendStats
from taskfleet.outbound import OutboundRefused, outbound_client

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
#: The first try and one retry on another backend.
MAX_ATTEMPTS = 2
SERVER_ERROR = 500
#: Errors raised before any byte of the request was sent: safe to retry for any method.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, OutboundRefused)


class BalancedClient:
    """HTTP calls to a backend set through a balancer.

    Example::

        balancer = Balancer.for_set("pricing", Adaptive(), redis_client=r)
        with httpx.Client(timeout=5.0) as http:
            client = BalancedClient(balancer, http)
            price = client.request("GET", "/price/42", affinity_key="customer-7").json()
    """

    def __init__(self, balancer: Balancer, http: httpx.Client | None = None) -> None:
        self.balancer = balancer
        self.http = outbound_client() if http is None else http

    def request(
        self, method: str, path: str, *, affinity_key: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        """Send ``method path`` to a backend; ``kwargs`` go to ``httpx.Client.request``.

        Returns:
            The response (a 5xx one too, when no retry was safe or possible).

        Raises:
            NoBackendAvailable: no backend was live (nothing was sent).
            httpx.HTTPError: the call failed on its last attempt.
        """
        method = method.upper()
        tried: list[str] = []
        while True:
            stats = self.balancer.acquire(affinity_key, exclude=tried)
            tried.append(stats.name)
            last = len(tried) >= min(MAX_ATTEMPTS, len(self.balancer.stats))
            if len(tried) > 1:
                stats.count("retries")
            try:
                response = self._send(stats, method, path, kwargs)
            except (httpx.TransportError, OutboundRefused) as exc:
                retry = isinstance(exc, NOT_SENT) or method in IDEMPOTENT_METHODS
                if last or not retry or not self.balancer.live(tried):
                    raise
                continue
            if response.status_code < SERVER_ERROR or method not in IDEMPOTENT_METHODS:
                return response
            if last or not self.balancer.live(tried):
                return response
            response.close()

    def _send(
        self, stats: BackendStats, method: str, path: str, kwargs: dict[str, Any]
    ) -> httpx.Response:
        started = time.perf_counter()
        try:
            response = self.http.request(method, stats.spec.url + path, **kwargs)
        except (httpx.TransportError, OutboundRefused) as exc:
            kind = "connect_errors" if isinstance(exc, NOT_SENT) else "transport_errors"
            self.balancer.release(stats, time.perf_counter() - started, ok=False, kind=kind)
            raise
        except BaseException:
            self.balancer.release(stats, time.perf_counter() - started, ok=False)
            raise
        failed = response.status_code >= SERVER_ERROR
        self.balancer.release(
            stats,
            time.perf_counter() - started,
            ok=not failed,
            kind="http_5xx" if failed else None,
        )
        return response

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        """``request("GET", path, ...)``."""
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        """``request("POST", path, ...)``."""
        return self.request("POST", path, **kwargs)
