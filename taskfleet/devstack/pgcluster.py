"""Throwaway PostgreSQL servers for sharding (tests, benchmarks): primaries and replicas.

Each server is its own cluster in a temporary folder (initdb, trust auth), listening only on
127.0.0.1 on a free port, started with the binaries the embedded stack uses (``pgserver``'s,
which include ``pg_basebackup``); as root they run as the unprivileged user the embedded
stack uses. A replica is a ``pg_basebackup -R`` copy of its primary (``standby.signal`` and
``primary_conninfo`` written by pg_basebackup), so it is a real streaming replica.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

from taskfleet.devstack.common import DevStackError
from taskfleet.devstack.postgres_env import (
    RunAs,
    pg_bin_dir,
    pg_run_as,
    prepare_root_permissions,
    run_pg_program,
)

HOST = "127.0.0.1"
USER = "postgres"
DATABASE = "postgres"
PROGRAM_TIMEOUT_S = 60.0
#: Room for a replica's WAL sender; throwaway servers (tests, benchmarks) add THROWAWAY_CONF.
SERVER_CONF = """
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
port = {port}
wal_level = replica
max_wal_senders = 4
wal_keep_size = '64MB'
max_connections = 60
shared_buffers = '16MB'
"""
#: Small and fast: no fsync, for data nobody keeps.
THROWAWAY_CONF = """
fsync = off
full_page_writes = off
"""


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class PgServer:
    """One server: its folder, port and log."""

    data: Path
    port: int
    run_as: RunAs | None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.data.with_suffix(".log")

    @property
    def url(self) -> str:
        """Its ``postgresql://`` URL."""
        return f"postgresql://{USER}@{HOST}:{self.port}/{DATABASE}"

    def _run(self, *args: str) -> None:
        done = run_pg_program(
            list(args), self.run_as, PROGRAM_TIMEOUT_S, self.data.parent, self.log
        )
        if done.returncode != 0:
            raise DevStackError(f"{args[0]} failed ({done.returncode})", self.log)

    def _make_dir(self) -> None:
        self.data.mkdir(mode=0o700)
        if self.run_as is not None:
            shutil.chown(self.data, self.run_as.uid, self.run_as.gid)
            prepare_root_permissions(self.data, pg_bin_dir())

    def init(self, *, durable: bool = False) -> None:
        """initdb with trust auth, then our settings (``durable``: keep fsync on)."""
        self._make_dir()
        self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "--no-sync",
                  "--no-locale", "--encoding=UTF8", "--no-instructions")  # fmt: skip
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(SERVER_CONF.format(port=self.port))
            if not durable:
                conf.write(THROWAWAY_CONF)

    def base_backup_of(self, primary: PgServer) -> None:
        """Make this a streaming replica of ``primary`` (pg_basebackup -R)."""
        self._make_dir()
        self._run("pg_basebackup", "-h", HOST, "-p", str(primary.port), "-U", USER,
                  "-D", str(self.data), "-X", "stream", "-R", "-c", "fast", "--no-sync")  # fmt: skip
        with (self.data / "postgresql.auto.conf").open("a") as conf:
            conf.write(f"port = {self.port}\n")

    def start(self) -> None:
        """pg_ctl start, waiting until it accepts connections."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop (``immediate``: as if the machine died)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        """Whether its postmaster is running."""
        return (self.data / "postmaster.pid").is_file()


@dataclass
class PgCluster:
    """Primaries, and replicas by primary index."""

    primaries: list[PgServer]
    replicas: dict[int, PgServer]

    @property
    def database_urls(self) -> str:
        """The ``TASKFLEET_DATABASE_URLS`` value for these servers."""
        return ",".join(
            "|".join([p.url] + ([self.replicas[i].url] if i in self.replicas else []))
            for i, p in enumerate(self.primaries)
        )

    def stop_all(self) -> None:
        """Stop every server still running (immediate)."""
        for server in [*self.replicas.values(), *self.primaries]:
            if server.running():
                with contextlib.suppress(DevStackError):
                    server.stop("immediate")


def start_cluster(base: Path, primaries: int, replica_of: tuple[int, ...] = ()) -> PgCluster:
    """Start ``primaries`` servers and one replica of each index in ``replica_of``."""
    run_as = pg_run_as()
    cluster = PgCluster([], {})
    try:
        for i in range(primaries):
            server = PgServer(base / f"primary{i}", free_port(), run_as)
            cluster.primaries.append(server)
            server.init()
            server.start()
        for i in replica_of:
            add_replica(cluster, base, i)
    except BaseException:
        cluster.stop_all()
        raise
    return cluster


def add_replica(cluster: PgCluster, base: Path, index: int) -> PgServer:
    """Start a streaming replica of primary ``index`` (``base / replica<index>``)."""
    replica = PgServer(base / f"replica{index}", free_port(), cluster.primaries[index].run_as)
    cluster.replicas[index] = replica
    replica.base_backup_of(cluster.primaries[index])
    replica.start()
    return replica
