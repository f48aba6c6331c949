"""Concrete service URLs: the configured ones, else the embedded dev stack's."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from taskfleet.config.settings import ENV_PREFIX, ConfigError, Settings, get_settings

_lock = threading.Lock()
_resolved: dict[tuple[str | None, str | None, str | None, str], ServiceURLs] = {}


@dataclass(frozen=True)
class ServiceURLs:
    """Where the broker, the shared Redis and the durable database live."""

    broker_url: str
    redis_url: str
    database_url: str


def resolve_services(settings: Settings | None = None) -> ServiceURLs:
    """Fill every unset URL from the embedded stack, starting it if needed (once per process).

    Configured URLs always win; the embedded stack is only touched when one is missing.

    Raises:
        ConfigError: A URL is unset and the embedded stack is not installed (the message
            names the unset variables and the ``embedded`` extra).
        taskfleet.devstack.DevStackError: The embedded stack could not start.
    """
    settings = settings or get_settings()
    key = (settings.broker_url, settings.redis_url, settings.database_url, settings.data_dir)
    with _lock:
        cached = _resolved.get(key)
        if cached is not None:
            return cached
        broker, redis_url, database = settings.broker_url, settings.redis_url, settings.database_url
        if redis_url is None and broker is not None and settings.broker_is_redis:
            redis_url = broker
        if broker is None and redis_url is not None:
            broker = redis_url
        if broker is None or redis_url is None or database is None:
            from taskfleet.devstack import EmbeddedStack, missing_embedded_packages

            missing = missing_embedded_packages()
            if missing:
                raise ConfigError(
                    _embedded_not_installed(
                        broker=broker, redis_url=redis_url, database=database, missing=missing
                    )
                )
            stack = EmbeddedStack(settings.data_dir).ensure_running()
            redis_url = redis_url or stack.redis_url
            broker = broker or redis_url
            database = database or stack.database_url
        urls = ServiceURLs(broker_url=broker, redis_url=redis_url, database_url=database)
        _resolved[key] = urls
        return urls


def _embedded_not_installed(
    *, broker: str | None, redis_url: str | None, database: str | None, missing: list[str]
) -> str:
    """Say which URLs are unset, that the embedded stack is missing, and how to fix either."""
    from taskfleet.devstack import EMBEDDED_EXTRA_INSTALL

    unset = [
        f"{ENV_PREFIX}{name.upper()}"
        for name, url in (
            ("broker_url", broker),
            ("redis_url", redis_url),
            ("database_url", database),
        )
        if url is None
    ]
    verb = "is" if len(unset) == 1 else "are"
    return (
        f"{', '.join(unset)} {verb} unset, and the embedded Redis/PostgreSQL that serves "
        f"unset URLs is not installed (missing: {', '.join(missing)}). Install it with: "
        f"{EMBEDDED_EXTRA_INSTALL}; or set the URL(s), and {ENV_PREFIX}EMBEDDED=false to "
        "never use the embedded stack"
    )
