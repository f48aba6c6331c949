"""The embedded PostgreSQL: the binaries bundled in the ``pgserver`` package."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

from taskfleet.devstack.common import (
    CLIENT_TIMEOUT,
    DATABASE_NAME,
    INITDB_TIMEOUT,
    KILL_TIMEOUT,
    LISTEN_HOST,
    PG_DIR_NAME,
    POSTGRES_USER,
    PREFERRED_PORT_WAIT_S,
    PROBE_TIMEOUT,
    START_ATTEMPTS,
    START_TIMEOUT,
    STOP_TIMEOUT,
    DevStackError,
    Probe,
    choose_port,
    clear_leftovers,
)
from taskfleet.devstack.logfiles import file_size, read_from
from taskfleet.devstack.polling import wait_until
from taskfleet.devstack.postgres_env import (
    PostmasterInfo,
    RunAs,
    pg_bin_dir,
    pg_run_as,
    prepare_root_permissions,
    read_postmaster_pid,
    run_pg_program,
)
from taskfleet.devstack.processes import is_server_process, pid_alive, port_open, signal_pid

PG_PROC_NAME = "postgres"
_PG_CONF_MARKER = "# --- taskfleet devstack ---"


def database_url(port: int) -> str:
    """The SQLAlchemy URL of the embedded database on ``port``."""
    return f"postgresql+psycopg://{POSTGRES_USER}@{LISTEN_HOST}:{port}/{DATABASE_NAME}"


class PostgresServer:
    """Initialises, starts, probes and stops the embedded PostgreSQL cluster in ``pg_dir``.

    Args:
        data_dir: The stack's data folder (programs run there; initdb works in it).
        pg_dir: The cluster folder (PGDATA).
        log: The log of initdb, pg_ctl and postgres.
    """

    def __init__(self, data_dir: Path, pg_dir: Path, log: Path) -> None:
        """Describe the server; nothing is started."""
        self.data_dir = data_dir
        self.pg_dir = pg_dir
        self.log = log

    def postmaster(self) -> PostmasterInfo | None:
        """``postmaster.pid`` of our live postmaster, else None."""
        info = read_postmaster_pid(self.pg_dir)
        if info is None or not is_server_process(info.pid, self.pg_dir):
            return None
        return info

    @staticmethod
    def _port_open(port: int) -> bool:
        return port_open(LISTEN_HOST, port, PROBE_TIMEOUT)

    def probe(self, port: object) -> Probe:
        """Observe the server, expected on the remembered ``port`` (if an int)."""
        info = self.postmaster()
        healthy = (
            info is not None
            and info.status == "ready"
            and isinstance(port, int)
            and info.port == port
            and self._port_open(port)
        )
        return Probe(info.pid if info else None, port if isinstance(port, int) else None, healthy)

    def recover(self, probe: Probe, exclude: set[int]) -> int:
        """Make postgres healthy: adopt, restart or start it; return its port."""
        run_as = pg_run_as()
        if probe.pid is not None:
            # Alive: it may still be starting or recovering, or run on another port
            # (state file lost). Adopt it if it becomes ready, else restart it.
            def ready() -> bool:
                info = self.postmaster()
                return (
                    info is not None
                    and info.status == "ready"
                    and info.port is not None
                    and self._port_open(info.port)
                )

            if wait_until(ready, START_TIMEOUT, backoff=True):
                info = self.postmaster()
                assert info is not None
                assert info.port is not None
                self._ensure_database(info.port)
                return info.port
            self.stop(run_as)
        return self.start(run_as, preferred=probe.port, exclude=exclude)

    def _run(
        self, args: list[str], run_as: RunAs | None, timeout: float, stdin_text: str = ""
    ) -> subprocess.CompletedProcess[bytes]:
        return run_pg_program(args, run_as, timeout, self.data_dir, self.log, stdin_text)

    def _ensure_initialized(self, run_as: RunAs | None) -> None:
        """Create the cluster with initdb unless it exists.

        initdb runs in a temporary folder renamed into place on success, so a ``pg/``
        folder always holds a complete cluster even if initdb was interrupted.
        """
        if (self.pg_dir / "PG_VERSION").is_file():
            return
        if self.pg_dir.exists():
            shutil.rmtree(self.pg_dir)  # not a cluster: debris
        # pgserver's logic: a server may survive the deletion of its data folder; kill it.
        clear_leftovers(self.pg_dir, PG_PROC_NAME, 0.0, self.log)
        tmp = self.data_dir / f"{PG_DIR_NAME}.initdb-tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        if run_as is not None:
            os.chown(tmp, run_as.uid, run_as.gid)
            prepare_root_permissions(tmp, pg_bin_dir())
        args = [
            "initdb",
            "-D", str(tmp),
            "-U", POSTGRES_USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
            "--no-instructions",
        ]  # fmt: skip
        done = self._run(args, run_as, INITDB_TIMEOUT)
        if done.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DevStackError(
                f"initdb failed with status {done.returncode} for {self.pg_dir}", self.log
            )
        with (tmp / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\n{_PG_CONF_MARKER}\n"
                f"listen_addresses = '{LISTEN_HOST}'\n"
                "unix_socket_directories = ''\n"
            )
        os.rename(tmp, self.pg_dir)

    def start(self, run_as: RunAs | None, preferred: int | None, exclude: set[int]) -> int:
        """Initialise if needed, then start on ``preferred`` (or a free port); return it.

        Raises:
            DevStackError: It did not start (the message names the log).
        """
        self._ensure_initialized(run_as)
        if run_as is not None:
            prepare_root_permissions(self.pg_dir, pg_bin_dir())
        # Orphaned children of a killed postmaster keep its shared memory attached and make
        # the new postmaster refuse to start: wait for them (they exit on their own) or kill.
        clear_leftovers(self.pg_dir, PG_PROC_NAME, KILL_TIMEOUT, self.log)
        # Stale postmaster.pid (reboot, kill -9): its pid is dead or now someone else's.
        with contextlib.suppress(FileNotFoundError):
            (self.pg_dir / "postmaster.pid").unlink()

        for _attempt in range(START_ATTEMPTS):
            port = choose_port(preferred, exclude, PREFERRED_PORT_WAIT_S)
            offset = file_size(self.log)
            args = [
                "pg_ctl",
                "-D", str(self.pg_dir),
                "-l", str(self.log),
                "-o", f"-p {port} -c listen_addresses={LISTEN_HOST} -c unix_socket_directories=''",
                "-w",
                "-t", str(int(START_TIMEOUT)),
                "start",
            ]  # fmt: skip
            done = self._run(args, run_as, START_TIMEOUT + 15)
            if done.returncode == 0 and self.postmaster() is not None and self._port_open(port):
                self._ensure_database(port)
                return port
            new_log = read_from(self.log, offset)
            if "could not bind" in new_log and "Address already in use" in new_log:
                preferred = None
                exclude = {*exclude, port}
                continue
            raise DevStackError(
                f"PostgreSQL failed to start on {LISTEN_HOST}:{port} "
                f"(pg_ctl status {done.returncode})",
                self.log,
            )
        raise DevStackError(
            f"PostgreSQL could not bind a port on {LISTEN_HOST} after {START_ATTEMPTS} tries",
            self.log,
        )

    def _ensure_database(self, port: int) -> None:
        """Create database :data:`DATABASE_NAME` if missing (psql ``\\gexec``)."""
        sql = (
            f"SELECT 'CREATE DATABASE {DATABASE_NAME}' WHERE NOT EXISTS "  # noqa: S608 (constant)
            f"(SELECT FROM pg_database WHERE datname = '{DATABASE_NAME}')\\gexec\n"
        )
        args = [
            "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-h", LISTEN_HOST, "-p", str(port), "-U", POSTGRES_USER, "-d", "postgres",
        ]  # fmt: skip
        done = self._run(args, None, CLIENT_TIMEOUT, stdin_text=sql)
        if done.returncode != 0:
            raise DevStackError(
                f"could not create database {DATABASE_NAME!r} on {LISTEN_HOST}:{port} "
                f"(psql status {done.returncode})",
                self.log,
            )

    def stop(self, run_as: RunAs | None = None) -> None:
        """Stop PostgreSQL (``pg_ctl stop -m fast``, then signals) and its children.

        Raises:
            DevStackError: It did not stop.
        """
        info = self.postmaster()
        if info is None:
            return
        if run_as is None:
            run_as = pg_run_as()
        args = ["pg_ctl", "-D", str(self.pg_dir), "-m", "fast", "-w"]
        args += ["-t", str(int(STOP_TIMEOUT)), "stop"]
        with contextlib.suppress(DevStackError):  # fall back to signals below
            self._run(args, run_as, STOP_TIMEOUT + 15)
        pid = info.pid
        if not wait_until(lambda: not pid_alive(pid), KILL_TIMEOUT, backoff=True):
            signal_pid(pid, signal.SIGINT)  # "fast" shutdown, in case pg_ctl could not run
            if not wait_until(lambda: not pid_alive(pid), STOP_TIMEOUT, backoff=True):
                signal_pid(pid, signal.SIGKILL)
        if pid_alive(pid):
            raise DevStackError(f"PostgreSQL (pid {pid}) did not stop", self.log)
        # Children exit with the postmaster; make sure nothing is left.
        clear_leftovers(self.pg_dir, PG_PROC_NAME, KILL_TIMEOUT, self.log)
