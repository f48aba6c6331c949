"""Startup check of Redis's ``maxmemory-policy``: shared state must never be evicted.

The broker Redis holds the queues, kombu's ``unacked`` records and taskfleet's owner keys;
``TASKFLEET_REDIS_URL`` holds the results, but also the persistence stream (results not yet in
Postgres), breaker, autoscaler, idempotency and dead-letter state. Several of those keys carry
TTLs, so every ``volatile-*`` policy may evict them, and every ``allkeys-*`` policy may evict
a queue. Only ``noeviction`` keeps them: a full Redis then refuses writes instead (README,
"Redis memory"). Workers call :func:`warn_if_evicting` at start; it logs, never raises, since
managed Redis services often disable ``CONFIG``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis

#: The only policy under which Redis never drops a key it holds.
SAFE_POLICY = "noeviction"
#: Bound on the check's connect and read, so a slow Redis never delays a worker's start.
CHECK_TIMEOUT_S = 2.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PolicyReport:
    """What one Redis says about eviction (``error``: why it could not be read)."""

    where: str
    policy: str | None = None
    maxmemory: int | None = None
    error: str | None = None

    @property
    def safe(self) -> bool:
        """Whether Redis is known never to evict (``noeviction``)."""
        return self.policy == SAFE_POLICY

    def message(self) -> str:
        """One log line for an operator."""
        if self.error is not None:
            return (
                f"could not read maxmemory-policy of Redis {self.where} ({self.error}); make sure "
                f"it is {SAFE_POLICY!r}, or queues and shared state may be evicted"
            )
        limit = f"maxmemory {self.maxmemory} bytes" if self.maxmemory else "maxmemory unset"
        if self.safe:
            return f"Redis {self.where}: maxmemory-policy {SAFE_POLICY}, {limit}"
        return (
            f"Redis {self.where} has maxmemory-policy {self.policy!r} ({limit}): it can evict "
            "queues, unacked deliveries, owner keys and breaker/autoscaler state (keys with a "
            f"TTL first). Set maxmemory-policy {SAFE_POLICY} and size maxmemory by the budget "
            "in README, 'Redis memory'"
        )


def redacted(url: str) -> str:
    """``host:port/db`` of a Redis URL, without credentials."""
    parts = urlsplit(url)
    return f"{parts.hostname or '?'}:{parts.port or 6379}{parts.path or '/0'}"


def read_policy(client: redis.Redis, where: str) -> PolicyReport:
    """Ask one Redis for ``maxmemory-policy`` and ``maxmemory`` (errors become the report)."""
    try:
        found = client.config_get("maxmemory*")
    except redis.RedisError as exc:  # CONFIG renamed or forbidden (managed Redis), or down
        return PolicyReport(where, error=f"{type(exc).__name__}: {exc}")
    raw_policy, raw_limit = found.get("maxmemory-policy"), found.get("maxmemory")
    if raw_policy is None:
        return PolicyReport(where, error="CONFIG GET returned no maxmemory-policy")
    policy = raw_policy.decode() if isinstance(raw_policy, bytes) else str(raw_policy)
    return PolicyReport(where, policy=policy, maxmemory=int(raw_limit or 0))


def check_urls(urls: Iterable[str]) -> list[PolicyReport]:
    """Read the policy of every distinct Redis in ``urls``."""
    reports: list[PolicyReport] = []
    for url in dict.fromkeys(urls):
        client = redis.Redis.from_url(
            url, socket_timeout=CHECK_TIMEOUT_S, socket_connect_timeout=CHECK_TIMEOUT_S
        )
        try:
            reports.append(read_policy(client, redacted(url)))
        finally:
            client.close()
    return reports


def warn_if_evicting(urls: Iterable[str], logger: logging.Logger = log) -> list[PolicyReport]:
    """Log a warning for every Redis in ``urls`` that may evict (or cannot tell); never raise."""
    reports = check_urls(urls)
    for report in reports:
        if report.safe:
            logger.info("taskfleet: %s", report.message())
        else:
            logger.warning("taskfleet: %s", report.message())
    return reports
