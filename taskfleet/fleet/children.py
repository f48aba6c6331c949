"""What a fleet runs: its options, its child processes, and how they fail."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from taskfleet.fleet.flower import DEFAULT_FLOWER_PORT

ChildRole = Literal["worker", "beat", "flower", "metrics"]


class FleetError(RuntimeError):
    """The fleet could not start, or stopped being healthy."""


class RestartFailed(FleetError):
    """A dead child could not be started again (the supervisor counts it as a crash)."""


@dataclass(frozen=True)
class FleetOptions:
    """What a :class:`~taskfleet.fleet.Fleet` runs.

    Attributes:
        cpu_concurrency: CPU worker processes (default: the settings').
        io_concurrency: I/O worker greenlets (default: the settings').
        flower: Run Flower.
        flower_port: Flower's port on 127.0.0.1.
        beat: Run ``celery beat``.
        metrics: Run the host's metrics endpoint (``taskfleet metrics serve``).
        keep_services: Leave an embedded stack this fleet started running on stop.
    """

    cpu_concurrency: int | None = None
    io_concurrency: int | None = None
    flower: bool = True
    flower_port: int = DEFAULT_FLOWER_PORT
    beat: bool = True
    metrics: bool = False
    keep_services: bool = False


class ChildProcess(Protocol):
    """What the supervisor uses of a running child: a ``subprocess.Popen``, or a forked
    worker's stand-in (:class:`taskfleet.fleet.forkserver.ForkedWorker`)."""

    @property
    def pid(self) -> int:
        """Its pid."""

    def poll(self) -> int | None:
        """Its exit status once exited (negative: the killing signal), else None."""

    def send_signal(self, sig: int) -> None:
        """Signal it, unless it has exited."""

    def wait(self, timeout: float | None = None) -> int:
        """Wait for its exit (raises ``subprocess.TimeoutExpired``)."""

    def terminate(self) -> None:
        """SIGTERM."""


@dataclass
class Child:
    """One supervised process.

    Attributes:
        name: Display name (``cpu-worker``, ``io-worker``, ``beat``, ``flower``).
        role: What it is.
        argv: Its command line.
        log_path: Where its stdout and stderr go.
        url: What it serves or connects to, for display.
        detail: A short description (pool, concurrency, queues), for display.
        nodename: The Celery node name (workers only), used to ping it.
        pool: A worker's pool (``prefork``, ``solo``, ``gevent``); None for the others.
        extra_env: Variables only this child gets (Flower's credentials).
        standby: A standby solo CPU worker, not promoted yet (``taskfleet.workers.standby``).
        popen: The running process, once started.
        killed: Whether stopping it needed SIGKILL.
    """

    name: str
    role: ChildRole
    argv: list[str]
    log_path: Path
    url: str
    detail: str = ""
    nodename: str | None = None
    pool: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict, repr=False)
    standby: bool = False
    popen: ChildProcess | None = field(default=None, repr=False)
    killed: bool = False

    @property
    def pid(self) -> int | None:
        """Its pid once started."""
        return self.popen.pid if self.popen is not None else None

    def returncode(self) -> int | None:
        """Its exit status if it has exited (reaps it), else None."""
        return self.popen.poll() if self.popen is not None else None


class ChildDied(FleetError):
    """A child process exited while it should have been running.

    Attributes:
        child: The child that exited.
        returncode: Its exit status (negative: killed by that signal).
    """

    def __init__(self, child: Child, returncode: int) -> None:
        """Describe the death of ``child``, naming its log."""
        super().__init__(
            f"{child.name} (pid {child.pid}) exited unexpectedly with status {returncode}; "
            f"log: {child.log_path}"
        )
        self.child = child
        self.returncode = returncode
