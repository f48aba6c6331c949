"""What both embedded servers share: layout and timing constants, public types, errors.

Also the two steps both server start-ups take: choosing a free port and clearing
leftover server processes from a data folder.
"""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass
from pathlib import Path

from taskfleet.devstack.logfiles import tail
from taskfleet.devstack.polling import wait_until
from taskfleet.devstack.processes import port_free, processes_in, terminate

# --------------------------------------------------------------------------- constants

DEFAULT_DATA_DIR = ".taskfleet"
"""Data folder used when none is given (relative to the current directory)."""

LISTEN_HOST = "127.0.0.1"
"""The only address the embedded servers listen on."""

DATABASE_NAME = "taskfleet"
"""Database created in the embedded PostgreSQL."""

POSTGRES_USER = "postgres"
"""PostgreSQL superuser role created by initdb (trust auth on loopback)."""

REDIS_DB = 0
"""Redis logical database used in the redis URL."""

ROOT_RUN_AS_USER = "pgserver"
"""Unprivileged system user PostgreSQL runs as when taskfleet runs as root."""

STATE_FILE_NAME = "stack.json"
LOCK_FILE_NAME = "stack.lock"
REDIS_DIR_NAME = "redis"
REDIS_PIDFILE_NAME = "redis.pid"
REDIS_LOG_NAME = "redis.log"
PG_DIR_NAME = "pg"
PG_LOG_NAME = "postgres.log"

START_TIMEOUT = 30.0
"""Seconds to wait for a server to become ready after launching it."""

STOP_TIMEOUT = 30.0
"""Seconds to wait for a server to exit after asking it to stop."""

KILL_TIMEOUT = 5.0
"""Seconds to wait for a process to vanish after SIGKILL."""

LOCK_TIMEOUT = 120.0
"""Seconds to wait for another process holding ``stack.lock`` (it may be running initdb)."""

INITDB_TIMEOUT = 120.0
"""Seconds allowed for ``initdb`` to create a new cluster."""

CLIENT_TIMEOUT = 30.0
"""Seconds allowed for a ``psql`` call (database creation)."""

PROBE_TIMEOUT = 1.0
"""Seconds allowed for a TCP health probe (loopback, normally well under a millisecond)."""

PORT_RANGE = (20000, 32000)
"""Range new ports are drawn from: below Linux's ephemeral range (32768+), so outgoing
connections are unlikely to squat on a remembered port while the stack is stopped."""

START_ATTEMPTS = 3
"""Launch attempts per server when its port is taken between choosing it and binding."""

STATE_VERSION = 1

LOG_TAIL_LINES = 15
LOG_TAIL_BYTES = 8192

# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class StackURLs:
    """Connection URLs of a running embedded stack.

    Attributes:
        redis_url: ``redis://127.0.0.1:<port>/0``.
        database_url: ``postgresql+psycopg://postgres@127.0.0.1:<port>/taskfleet``
            (SQLAlchemy style; strip ``+psycopg`` for plain libpq / psycopg).
    """

    redis_url: str
    database_url: str


class DevStackError(RuntimeError):
    """An embedded server could not be started, stopped or inspected.

    The message names what failed and the log file to read.

    Attributes:
        log_path: The log file with details, when there is one.
    """

    def __init__(self, message: str, log_path: Path | None = None) -> None:
        """Create the error.

        Args:
            message: What failed.
            log_path: Log file to read for details; appended to the message with its tail.
        """
        if log_path is not None:
            message = f"{message}\nSee the log file: {log_path}"
            last = tail(log_path, LOG_TAIL_LINES, LOG_TAIL_BYTES)
            if last:
                message = f"{message}\n--- last lines of {log_path.name} ---\n{last}"
        super().__init__(message)
        self.log_path = log_path


@dataclass(frozen=True)
class Probe:
    """Observed state of one server.

    Attributes:
        pid: Live server process of ours, if any.
        port: Port it listens on (or the remembered one).
        healthy: Pid alive and accepting TCP connections on the remembered port.
    """

    pid: int | None
    port: int | None
    healthy: bool


# --------------------------------------------------------------------------- start-up steps


PREFERRED_PORT_WAIT_S = 5.0
"""Seconds a restart waits for its remembered port to come free (a server just killed may
still hold it for a moment), before it takes another one: clients keep their URLs."""


def choose_port(preferred: int | None, exclude: set[int], wait_s: float = 0.0) -> int:
    """Return ``preferred`` if it is free (within ``wait_s``), else a free port outside ``exclude``.

    Raises:
        DevStackError: No free port was found.
    """
    if (
        preferred
        and preferred not in exclude
        and wait_until(lambda: port_free(LISTEN_HOST, preferred), wait_s, backoff=True)
    ):
        return preferred
    low, high = PORT_RANGE
    for _ in range(100):
        port = random.randrange(low, high)
        if port not in exclude and port_free(LISTEN_HOST, port):
            return port
    for _ in range(100):  # crowded range: let the kernel pick an ephemeral port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LISTEN_HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in exclude:
            return port
    raise DevStackError(f"no free TCP port found on {LISTEN_HOST}")


def clear_leftovers(workdir: Path, name: str, grace: float, log_path: Path) -> None:
    """Clear leftover ``name`` processes in ``workdir``.

    Waits up to ``grace`` seconds for them to exit, then terminates them.

    Raises:
        DevStackError: Some could not be killed.
    """
    if wait_until(lambda: not processes_in(workdir, name), grace, backoff=True):
        return
    leftovers = processes_in(workdir, name)
    if terminate(leftovers, KILL_TIMEOUT, KILL_TIMEOUT):
        raise DevStackError(
            f"could not stop leftover {name} processes {leftovers} in {workdir}", log_path
        )
