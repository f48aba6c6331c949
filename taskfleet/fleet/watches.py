"""What the supervision loop watches: a child process, or an embedded server.

A child (worker, beat, Flower) is the supervisor's own subprocess: its exit status says how
it ended, and a restart sweeps what it left in its process group before launching it again.
The embedded Redis and PostgreSQL run detached (daemonised), so they are watched through
the stack's probes (pidfile, ``/proc``, a TCP connect) and restarted with
:meth:`~taskfleet.devstack.EmbeddedStack.ensure_running` on the port they had; Redis comes
back from its append-only file.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from celery import Celery

from taskfleet.devstack import DevStackError, EmbeddedStack
from taskfleet.fleet.children import Child, FleetError, RestartFailed
from taskfleet.fleet.flower import FLOWER_HOST
from taskfleet.fleet.processes import PING_TIMEOUT_S, port_open
from taskfleet.fleet.restarts import describe_exit

ServiceName = Literal["redis", "postgres"]

UNRESPONSIVE_PROBES = 3
"""Failed probes in a row before a server whose process lives counts as dead."""


class Pinger:
    """Pings workers from a background thread, so the loop never waits on the broker.

    kombu publishes a ping with ``retry=True``: while the broker is down it would block
    the supervisor, which is what has to restart the broker. So each ping runs in a daemon
    thread; :meth:`answered` reports what the last finished ping heard and starts the next.

    Args:
        app: A Celery app on the fleet's broker.
        timeout: Seconds one ping waits for replies.
    """

    def __init__(self, app: Celery, timeout: float = PING_TIMEOUT_S) -> None:
        """Ping nothing yet."""
        self.app = app
        self.timeout = timeout
        self._heard: set[str] = set()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def answered(self, nodename: str) -> bool:
        """Whether ``nodename`` answered since it was last asked for; pings it if not."""
        with self._lock:
            if nodename in self._heard:
                self._heard.discard(nodename)
                return True
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._ping, args=(nodename,), name="fleet-ping", daemon=True
            )
            self._thread.start()
        return False

    def _ping(self, nodename: str) -> None:
        try:
            replies = self.app.control.ping(destination=[nodename], timeout=self.timeout)
        except Exception:  # broker trouble: not ready yet, ask again later
            return
        with self._lock:
            for reply in replies or []:
                self._heard.update(reply)


class ChildWatch:
    """A child process of the fleet.

    Args:
        child: The child.
        relaunch: Starts it again (sweeping its old process group first).
        ping: Whether a Celery node name answers a ping now.
        flower_port: Flower's port (Flower is ready when it accepts connections).
    """

    def __init__(
        self,
        child: Child,
        relaunch: Callable[[Child], None],
        ping: Callable[[str], bool],
        flower_port: int,
    ) -> None:
        """Watch ``child``."""
        self.child = child
        self._relaunch = relaunch
        self._ping = ping
        self._flower_port = flower_port

    @property
    def name(self) -> str:
        """The child's display name."""
        return self.child.name

    @property
    def log_path(self) -> Path:
        """The child's log."""
        return self.child.log_path

    @property
    def pid(self) -> int | None:
        """The child's current pid."""
        return self.child.pid

    def exited(self) -> str | None:
        """None while it runs, else its exit status or the signal that killed it."""
        code = self.child.returncode()
        return None if code is None else describe_exit(code)

    def restart(self) -> None:
        """Launch it again (same command line, node name and log, appended)."""
        self._relaunch(self.child)

    def ready(self) -> bool:
        """A worker answers a ping; Flower accepts connections; beat runs."""
        if self.child.nodename is not None:
            return self._ping(self.child.nodename)
        if self.child.role == "flower":
            return port_open(FLOWER_HOST, self._flower_port)
        return True


class ServiceWatch:
    """An embedded server (Redis or PostgreSQL) the fleet started.

    Args:
        stack: The embedded stack.
        service: ``redis`` or ``postgres``.
        url: Its URL when the fleet started (the children use it).
    """

    def __init__(self, stack: EmbeddedStack, service: ServiceName, url: str) -> None:
        """Watch ``service`` of ``stack``."""
        self.stack = stack
        self.service = service
        self.url = url
        self._pid: int | None = None
        self._unresponsive = 0

    @property
    def name(self) -> str:
        """``redis`` or ``postgres``."""
        return self.service

    @property
    def log_path(self) -> Path:
        """The server's log."""
        return self.stack.redis_log if self.service == "redis" else self.stack.pg_log

    @property
    def pid(self) -> int | None:
        """The server's pid when last seen running."""
        return self._pid

    def exited(self) -> str | None:
        """None while it runs and answers on its port, else what is wrong."""
        entry = self.stack.status()[self.service]
        assert isinstance(entry, dict)
        if entry.get("running"):
            pid = entry.get("pid")
            self._pid = pid if isinstance(pid, int) else None
            self._unresponsive = 0
            return None
        if entry.get("pid") is None:
            return "its process is gone"
        self._unresponsive += 1  # alive: one failed connect may be a blip under load
        if self._unresponsive < UNRESPONSIVE_PROBES:
            return None
        return f"not answering on port {entry.get('port')}"

    def restart(self) -> None:
        """Start the server again on its port (Redis replays its append-only file).

        Raises:
            RestartFailed: It did not start (the message has its log's last lines).
            FleetError: It came back on another port: the children would not find it.
        """
        try:
            urls = self.stack.ensure_running()
        except DevStackError as exc:
            raise RestartFailed(f"{self.service}: {exc}") from exc
        url = urls.redis_url if self.service == "redis" else urls.database_url
        if url != self.url:
            raise FleetError(
                f"embedded {self.service} came back at {url}, not {self.url} (its port was "
                "taken); restart taskfleet up"
            )
        self.exited()  # remember the new pid

    def ready(self) -> bool:
        """Whether it runs and answers on its port."""
        return self.exited() is None and self._unresponsive == 0
