"""Flower, the fleet's monitoring UI: where it listens, its credentials, whether installed.

Flower is taskfleet's ``flower`` extra (``pip install 'taskfleet[flower]'``): workers and
producers do without it, and nothing here imports it (it runs as ``celery ... flower``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from taskfleet.config import ConfigError, Settings
from taskfleet.devstack.packages import package_dir
from taskfleet.fleet.environment import SECRET_ENV

DEFAULT_FLOWER_PORT = 5555
FLOWER_HOST = "127.0.0.1"
DEFAULT_FLOWER_USER = "admin"
FLOWER_PASSWORD_BYTES = 18
"""Random bytes in a generated Flower password (24 URL-safe characters)."""
FLOWER_PACKAGE = "flower"
"""The package that provides ``celery flower`` (the ``flower`` extra)."""
FLOWER_EXTRA_INSTALL = "pip install 'taskfleet[flower]'"
"""The command that installs :data:`FLOWER_PACKAGE`."""
FLOWER_NOT_INSTALLED = (
    f"Flower is not installed (missing: {FLOWER_PACKAGE}): install it with "
    f"{FLOWER_EXTRA_INSTALL}, or run without it (--no-flower)"
)
"""Why a fleet asked to run Flower does not start without it."""


def flower_installed() -> bool:
    """Whether Flower is installed (found without importing it)."""
    return package_dir(FLOWER_PACKAGE) is not None


@dataclass(frozen=True)
class FlowerAuth:
    """Flower's basic-auth credentials.

    Attributes:
        user: User name.
        password: Password.
        generated: True when taskfleet generated the password (print it once).
    """

    user: str
    password: str = field(repr=False)
    generated: bool

    @property
    def env_value(self) -> str:
        """The ``user:password`` value Flower reads from ``FLOWER_BASIC_AUTH``."""
        return f"{self.user}:{self.password}"


def flower_auth(settings: Settings) -> FlowerAuth:
    """The configured Flower credentials, or ``admin`` with a fresh random password.

    Raises:
        ConfigError: ``TASKFLEET_FLOWER_BASIC_AUTH`` is not ``user:password``.
    """
    if settings.flower_basic_auth is None:
        return FlowerAuth(
            DEFAULT_FLOWER_USER, secrets.token_urlsafe(FLOWER_PASSWORD_BYTES), generated=True
        )
    user, sep, password = settings.flower_basic_auth.get_secret_value().partition(":")
    if not sep or not user or not password or "," in user or "," in password:
        raise ConfigError(f"{SECRET_ENV} must be 'user:password' (both non-empty, no commas)")
    return FlowerAuth(user, password, generated=False)
