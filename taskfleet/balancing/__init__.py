"""Load balancing of outbound calls across a backend set (webhooks, pricing, registries).

* :mod:`~taskfleet.balancing.strategies` -- round robin, weighted (smooth, as nginx), least
  connections, least response time (EWMA), adaptive (power of two choices, as Envoy);
  :mod:`~taskfleet.balancing.affinity` -- sticky sessions on a consistent-hash ring;
* :mod:`~taskfleet.balancing.stats` -- this process's books per backend (in flight, latency,
  counters); :mod:`~taskfleet.balancing.health` -- fleet-wide down marks and ejections in
  Redis, with a local fallback (:mod:`~taskfleet.balancing.local`);
* :mod:`~taskfleet.balancing.balancer` -- pick and book-keep, passive outlier ejection;
  :mod:`~taskfleet.balancing.checker` -- active health checks;
  :mod:`~taskfleet.balancing.client` -- :class:`BalancedClient`, the HTTP calls jobs make;
* :mod:`~taskfleet.balancing.cli` -- ``taskfleet backends status``.
"""

from __future__ import annotations

from taskfleet.balancing.affinity import Affinity
from taskfleet.balancing.balancer import Balancer, NoBackendAvailable
from taskfleet.balancing.checker import HealthChecker
from taskfleet.balancing.client import BalancedClient
from taskfleet.balancing.strategies import (
    Adaptive,
    LeastConnections,
    LeastResponseTime,
    RoundRobin,
    Strategy,
    Weighted,
)

__all__ = [
    "Adaptive",
    "Affinity",
    "BalancedClient",
    "Balancer",
    "HealthChecker",
    "LeastConnections",
    "LeastResponseTime",
    "NoBackendAvailable",
    "RoundRobin",
    "Strategy",
    "Weighted",
]
