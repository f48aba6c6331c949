"""Worker (and beat) processes of one chaos scenario: start, wait ready, kill, stop.

Each process runs in its own session, so a scenario can signal the whole tree of a worker
(its prefork pool processes and its result persister) or a single process of it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis
from celery import Celery
from kombu.exceptions import OperationalError

from taskfleet.devstack.polling import wait_until
from taskfleet.workers.main import command_line
from taskfleet.workers.profiles import WorkerProfile

#: Errors of the broker connection a ping may meet while a scenario disturbs it.
BROKER_ERRORS = (redis.ConnectionError, OperationalError, OSError)

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
KILL_WAIT_S = 5.0
PING_TIMEOUT_S = 0.5
LOG_TAIL_BYTES = 3000


@dataclass
class Proc:
    """One started process: its role name, nodename (workers), command and log."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    nodename: str | None = None

    @property
    def pid(self) -> int:
        """The main process's pid."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether the main process still runs."""
        return self.popen.poll() is None

    def tree(self) -> set[int]:
        """Pids of the main process and every live descendant (pool processes, persister)."""
        try:
            root = psutil.Process(self.pid)
            return {self.pid, *(c.pid for c in root.children(recursive=True))}
        except psutil.Error:
            return set()

    def log_tail(self) -> str:
        """The end of its log, for error messages."""
        with contextlib.suppress(OSError):
            return self.log.read_bytes()[-LOG_TAIL_BYTES:].decode(errors="replace")
        return ""


@dataclass
class ChaosFleet:
    """The processes of one scenario, sharing one environment."""

    env: dict[str, str]
    log_dir: Path
    app: Celery
    procs: list[Proc] = field(default_factory=list)

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        extra_env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> Proc:
        """Start ``argv`` (``celery ...``) in its own session, logging to ``log_dir``.

        Args:
            name: Role name (log file name, error messages).
            argv: The command, starting with ``celery``.
            extra_env: Variables only this process gets.
            prefix: A command that runs it (``ip netns exec <ns>``: it execs, same pid).

        Returns:
            The process.
        """
        log = self.log_dir / f"{name}.log"
        command = [*prefix, *command_line(argv)]
        env = {**os.environ, "PYTHONPATH": os.getcwd(), **self.env, **(extra_env or {})}
        with log.open("ab") as out:
            popen = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def start_worker(
        self,
        profile: WorkerProfile,
        name: str,
        extra_env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> Proc:
        """Start a worker of ``profile`` (not waiting; see :meth:`wait_ready`)."""
        hostname = f"{name}-{uuid.uuid4().hex[:6]}@%h"
        argv = profile.argv(hostname=hostname, loglevel="INFO")
        proc = self.spawn(name, argv, extra_env, prefix)
        proc.nodename = hostname.replace("%h", os.uname().nodename)
        return proc

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Wait until every worker answers a ping.

        Raises:
            RuntimeError: A worker exited or stayed silent (the message has its log's end).
        """
        pending = {p.nodename: p for p in self.procs if p.nodename and p.alive()}

        def ready() -> bool:
            for proc in pending.values():
                if not proc.alive():
                    raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
            try:
                replies = self.app.control.ping(sorted(pending), timeout=PING_TIMEOUT_S) or []
            except BROKER_ERRORS:
                # The ping's own connection dropped (a scenario's Redis closing idle or
                # restarted clients): not an answer either way; ask again on a new one.
                return False
            for reply in replies:
                for node in reply:
                    pending.pop(node, None)
            return not pending

        if not wait_until(ready, timeout):
            names = ", ".join(p.name for p in pending.values())
            raise RuntimeError(f"workers not ready after {timeout:.0f}s: {names}")

    @staticmethod
    def kill_tree(proc: Proc, pids: set[int], sig: signal.Signals = signal.SIGKILL) -> None:
        """Send ``sig`` to ``proc``'s whole group at once, then to ``pids`` (its tree, read
        before: a descendant that left the group dies with the tree too)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(KILL_WAIT_S)

    def stop(self, *, graceful: bool = True) -> None:
        """SIGTERM every live process, wait (bounded), then SIGKILL whatever is left.

        Args:
            graceful: False skips the SIGTERM and the wait (a scenario that has counted).
        """
        for proc in self.procs if graceful else ():
            if proc.alive():
                proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + (STOP_TIMEOUT_S if graceful else 0.0)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(max(0.0, deadline - time.monotonic()))
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(KILL_WAIT_S)
        self.procs.clear()
