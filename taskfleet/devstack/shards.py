"""Embedded shards: more PostgreSQL primaries, each with an optional streaming replica.

``taskfleet shards up N [--replicas]`` starts (or finds running) N primaries under
``<data_dir>/shards/`` with the embedded stack's binaries, each replica a ``pg_basebackup -R``
copy of its primary, and prints the ``TASKFLEET_DATABASE_URLS`` value that names them:

    export TASKFLEET_DATABASE_URLS="$(taskfleet shards up 3 --replicas)"
    taskfleet up

Unlike the tests' throwaway servers these keep fsync on, and their data and ports
(``shards.json``) outlive a stop: ``up`` again starts the same servers on the same ports with
their rows. ``taskfleet shards down`` stops them. Only loopback listens.
"""

from __future__ import annotations

import socket
from pathlib import Path

from taskfleet.devstack.common import DevStackError
from taskfleet.devstack.pgcluster import HOST, PgCluster, PgServer, free_port
from taskfleet.devstack.postgres_env import pg_run_as
from taskfleet.devstack.state import locked, read_state, write_state

SHARDS_DIR_NAME = "shards"
STATE_NAME = "shards.json"
LOCK_NAME = "shards.lock"
MAX_SHARDS = 16
ANSWER_TIMEOUT_S = 0.5


def _answers(port: int) -> bool:
    """Whether something accepts connections on ``port`` (loopback)."""
    try:
        with socket.create_connection((HOST, port), timeout=ANSWER_TIMEOUT_S):
            return True
    except OSError:
        return False


class EmbeddedShards:
    """The embedded shard servers under ``data_dir / "shards"``."""

    def __init__(self, data_dir: str | Path) -> None:
        self.base = Path(data_dir).absolute() / SHARDS_DIR_NAME
        self.state_path = self.base / STATE_NAME

    def _server(self, name: str, ports: dict[str, int]) -> PgServer:
        port = ports.get(name)
        if port is None or (not (self.base / name).is_dir() and not _answers_free(port)):
            port = ports[name] = free_port()
        return PgServer(self.base / name, port, pg_run_as())

    def up(self, count: int, *, replicas: bool = False) -> PgCluster:
        """Start what is not running of ``count`` primaries (and their replicas).

        Raises:
            ValueError: ``count`` is not 1..MAX_SHARDS.
            DevStackError: a server would not start (the message names its log).
        """
        if not 1 <= count <= MAX_SHARDS:
            raise ValueError(f"shards: 1..{MAX_SHARDS}, not {count}")
        with locked(self.base, self.base / LOCK_NAME):
            state = read_state(self.state_path)
            ports: dict[str, int] = dict(state.get("ports", {}))
            cluster = PgCluster([], {})
            for i in range(count):
                primary = self._server(f"primary{i}", ports)
                if not (primary.data / "PG_VERSION").is_file():
                    primary.init(durable=True)
                cluster.primaries.append(primary)
                self._start(primary)
            for i in range(count) if replicas else ():
                replica = self._server(f"replica{i}", ports)
                if not (replica.data / "PG_VERSION").is_file():
                    replica.base_backup_of(cluster.primaries[i])
                cluster.replicas[i] = replica
                self._start(replica)
            state["ports"] = ports
            write_state(self.state_path, state)
            return cluster

    @staticmethod
    def _start(server: PgServer) -> None:
        if not _answers(server.port):
            server.start()

    def down(self) -> list[str]:
        """Stop every embedded shard server that runs; the names of those stopped."""
        if not self.base.is_dir():
            return []
        stopped = []
        with locked(self.base, self.base / LOCK_NAME):
            ports: dict[str, int] = dict(read_state(self.state_path).get("ports", {}))
            for name in sorted(ports, key=lambda n: n.startswith("primary")):  # replicas first
                server = PgServer(self.base / name, ports[name], pg_run_as())
                if server.running():
                    try:
                        server.stop("fast")
                    except DevStackError:
                        continue
                    stopped.append(name)
        return stopped


def _answers_free(port: int) -> bool:
    """Whether a remembered ``port`` is still free to bind (nothing else took it)."""
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True
