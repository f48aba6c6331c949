"""What the supervision loop watches: a child process, or an embedded server.

A child (worker, beat, Flower) is the supervisor's own subprocess: its exit status says how
it ended, and a restart sweeps what it left in its process group before launching it again.
The embedded Redis and PostgreSQL run detached (daemonised), so they are watched through
the stack's probes (pidfile, ``/proc``, a TCP connect) and restarted with
:meth:`~taskfleet.devstack.EmbeddedStack.ensure_running` on the port they had; Redis comes
back from its append-only file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from taskfleet.devstack import DevStackError, EmbeddedStack
from taskfleet.fleet.children import Child, FleetError, RestartFailed
from taskfleet.fleet.flower import FLOWER_HOST
from taskfleet.fleet.pinger import Pinger
from taskfleet.fleet.processes import port_open
from taskfleet.fleet.restarts import describe_exit

ServiceName = Literal["redis", "postgres"]

UNRESPONSIVE_PROBES = 3
"""Failed probes in a row before a server whose process lives counts as dead."""


class ChildWatch:
    """A child process of the fleet.

    A worker whose process lives but which answered no ping for ``silence_limit_s`` seconds
    of rounds that reached the broker counts as dead (:meth:`stalled`): the supervisor
    restarts it like one that exited. 0 turns that off.

    Args:
        child: The child.
        relaunch: Starts it again (ending what is left of the old one first).
        pinger: Pings the fleet's workers.
        flower_port: Flower's port (Flower is ready when it accepts connections).
        silence_limit_s: Seconds without an answer before a live worker counts as dead.
        ready_dir: Where a worker marks, by pid, that it came up (None: no marks).
        clock: Monotonic seconds.
    """

    def __init__(
        self,
        child: Child,
        relaunch: Callable[[Child], None],
        pinger: Pinger,
        flower_port: int,
        silence_limit_s: float = 0.0,
        ready_dir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Watch ``child``."""
        self.child = child
        self._ready_dir = ready_dir
        self._relaunch = relaunch
        self._pinger = pinger
        self._flower_port = flower_port
        self.silence_limit_s = silence_limit_s
        self._clock = clock
        self._since = clock()

    @property
    def name(self) -> str:
        """The child's display name."""
        return self.child.name

    @property
    def log_path(self) -> Path:
        """The child's log."""
        return self.child.log_path

    @property
    def runs_jobs(self) -> bool:
        """A worker runs jobs (beat, Flower and the metrics endpoint do not)."""
        return self.child.role == "worker"

    @property
    def pid(self) -> int | None:
        """The child's current pid."""
        return self.child.pid

    @property
    def standby(self) -> bool:
        """A standby solo CPU worker, until it is promoted."""
        return self.child.standby

    def exited(self) -> str | None:
        """None while it runs, else its exit status or the signal that killed it."""
        code = self.child.returncode()
        return None if code is None else describe_exit(code)

    def restart(self) -> None:
        """Launch it again (same command line, node name and log, appended)."""
        self._relaunch(self.child)
        self.forgive()

    def stalled(self) -> str | None:
        """None while it answers pings (or is no worker, or the check is off), else why it
        counts as dead although its process lives."""
        node = self.child.nodename
        if node is None or self.silence_limit_s <= 0:
            return None
        silent = self._pinger.silent_for(node, self._since)
        if silent < self.silence_limit_s:
            return None
        return f"stalled: alive, but answered no ping for {silent:.0f}s"

    def forgive(self) -> None:
        """Count its silence from now (it was restarted, or a service it needs was)."""
        self._since = self._clock()

    def came_up(self) -> bool:
        """Whether the child's current process marked that it came up (a worker, under
        ``taskfleet up``); true still after it died."""
        pid = self.child.pid
        return (
            self._ready_dir is not None
            and pid is not None
            and (self._ready_dir / str(pid)).exists()
        )

    def ready(self) -> bool:
        """A worker marked it came up or answers a ping; Flower accepts connections; beat
        runs."""
        if self.child.nodename is not None:
            return self.came_up() or self._pinger.answered(self.child.nodename)
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

    @property
    def runs_jobs(self) -> bool:
        """A server runs no jobs."""
        return False

    @property
    def standby(self) -> bool:
        """A server is never a standby."""
        return False

    def came_up(self) -> bool:
        """A server's recovery is judged by :meth:`ready` alone."""
        return False

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

    def stalled(self) -> None:
        """Never: :meth:`exited` already counts a server that does not answer."""
        return

    def forgive(self) -> None:
        """Nothing to forgive (see :meth:`stalled`)."""
