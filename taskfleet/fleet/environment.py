"""What a child process sees: the ``TASKFLEET_*`` environment and the services it uses."""

from __future__ import annotations

import os

from kombu.utils.url import maybe_sanitize_url
from pydantic import SecretStr

from taskfleet.config import ServiceURLs, Settings
from taskfleet.config.settings import ENV_PREFIX

URL_ENV = {
    "broker_url": f"{ENV_PREFIX}BROKER_URL",
    "redis_url": f"{ENV_PREFIX}REDIS_URL",
    "database_url": f"{ENV_PREFIX}DATABASE_URL",
}
"""The variable each resolved service URL is exported as."""

SECRET_ENV = f"{ENV_PREFIX}FLOWER_BASIC_AUTH"
"""taskfleet's Flower credentials setting; never exported to children."""

FLOWER_AUTH_ENV = "FLOWER_BASIC_AUTH"
"""The variable Flower itself reads its credentials from (only Flower gets it)."""


def sanitize_url(url: str) -> str:
    """``url`` with any password masked, for display."""
    return str(maybe_sanitize_url(url))


def _env_value(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def settings_env(settings: Settings, urls: ServiceURLs) -> dict[str, str | None]:
    """``TASKFLEET_*`` variables that make a child process see exactly ``settings``.

    Fields set explicitly (environment, ``.env`` or constructor) are exported, the service
    URLs are always the resolved ones (so every child shares one stack), the data folder is
    absolute, and the Flower secret is left out (only Flower gets it, under its own name).
    A value of None means "remove this variable".
    """
    env: dict[str, str | None] = {}
    for name in settings.model_fields_set:
        env[f"{ENV_PREFIX}{name.upper()}"] = _env_value(getattr(settings, name))
    env[URL_ENV["broker_url"]] = urls.broker_url
    env[URL_ENV["redis_url"]] = urls.redis_url
    env[URL_ENV["database_url"]] = urls.database_url
    env[f"{ENV_PREFIX}DATA_DIR"] = os.path.abspath(settings.data_dir)
    env[SECRET_ENV] = None
    return env


def child_env(settings: Settings, urls: ServiceURLs, extra: dict[str, str]) -> dict[str, str]:
    """The full environment of one child: ours, adjusted by :func:`settings_env`, plus ``extra``.

    Args:
        settings: The fleet's settings.
        urls: The resolved service URLs.
        extra: Variables only this child gets (Flower's credentials).

    Returns:
        The environment to launch the child with.
    """
    env = dict(os.environ)
    for key, value in settings_env(settings, urls).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    env.pop(FLOWER_AUTH_ENV, None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def needs_embedded_stack(settings: Settings) -> bool:
    """Whether :func:`~taskfleet.config.resolve_services` has to use the embedded stack."""
    broker, redis_url = settings.broker_url, settings.redis_url
    if redis_url is None and broker is not None and settings.broker_is_redis:
        redis_url = broker
    if broker is None and redis_url is not None:
        broker = redis_url
    return broker is None or redis_url is None or settings.database_url is None
