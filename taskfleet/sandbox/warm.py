"""Launchers started ahead of need: one kept warm per executor, so a run skips a start-up."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from taskfleet.config.sandbox import SandboxSettings
from taskfleet.sandbox import launcher
from taskfleet.sandbox.isolation import HostIds
from taskfleet.sandbox.result import Mode


def kill_group(pgid: int) -> None:
    """SIGKILL a launcher's process group (the launcher and, in rlimits mode, its program)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


@dataclass
class Launcher:
    """A started launcher waiting for its run."""

    proc: subprocess.Popen[bytes]
    mode: Mode
    ids: HostIds
    status_r: int
    control_w: int

    def discard(self) -> None:
        """Kill an unused launcher and release its pipes."""
        kill_group(self.proc.pid)
        for fd in (self.status_r, self.control_w):
            os.close(fd)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()
        self.proc.wait()


class LauncherPool:
    """Starts launchers and keeps one warm; thread-safe."""

    def __init__(self, settings: SandboxSettings, python: str, base_dir: Path) -> None:
        self.settings = settings
        self.python = python
        self.base_dir = base_dir
        self._lock = threading.Lock()
        self._warm: Launcher | None = None

    def close(self) -> None:
        """Stop the launcher kept ready, if any."""
        with self._lock:
            warm, self._warm = self._warm, None
        if warm is not None:
            warm.discard()

    def spawn(self, mode: Mode) -> Launcher:
        """Start a launcher: it unshares and waits for its run."""
        self.base_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
        (self.base_dir / "root").mkdir(mode=0o755, exist_ok=True)
        status_r, status_w = os.pipe()
        control_r, control_w = os.pipe()
        argv = [self.python, "-I", "-S", "-B", launcher.__file__]
        try:
            proc = subprocess.Popen(
                [*argv, str(status_w), str(control_r), mode, sys.base_prefix],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(status_w, control_r),
                env={},
                cwd="/",
                start_new_session=True,
            )
        finally:
            os.close(status_w)
            os.close(control_r)
        return Launcher(proc, mode, HostIds.allocate(self.settings), status_r, control_w)

    def take(self, mode: Mode) -> Launcher:
        """The warm launcher if it suits ``mode`` and still lives, else a fresh one."""
        with self._lock:
            warm, self._warm = self._warm, None
        if warm is not None and warm.mode == mode and warm.proc.poll() is None:
            return warm
        if warm is not None:
            warm.discard()
        return self.spawn(mode)

    def prestart(self, mode: Mode) -> None:
        """Start the next run's launcher now, replacing any kept one."""
        fresh = self.spawn(mode)
        with self._lock:
            previous, self._warm = self._warm, fresh
        if previous is not None:
            previous.discard()
