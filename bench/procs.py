"""Worker subprocesses: start, stop (always, bounded), and measure peak RSS."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench.common import WORKER_STOP_TIMEOUT_S

LOG_DIR = Path(".taskfleet/bench-logs")
KILL_WAIT_S = 5.0
KIB = 1024


def _venv_bin(name: str) -> str:
    """Path of a console script next to the running interpreter (the venv's ``bin``)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


class WorkerGroup:
    """Worker processes, each in its own session so its whole tree can be signalled."""

    def __init__(self, name: str) -> None:
        """Create an empty group.

        Args:
            name: Used for log file names.
        """
        self.name = name
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, argv: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        """Start one worker command; its output goes to ``.taskfleet/bench-logs``.

        Args:
            argv: Command; a bare first word is looked up in the venv's ``bin`` first.
            env: Extra environment variables.

        Returns:
            The process.
        """
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        log_path = LOG_DIR / f"{self.name}-{len(self.procs)}.log"
        full_env = {**os.environ, "PYTHONPATH": os.getcwd(), **env}
        argv = [_venv_bin(argv[0]), *argv[1:]]
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                argv, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs.append(proc)
        return proc

    def check_alive(self) -> None:
        """Raise if a worker already exited (e.g. a bad command line).

        Raises:
            RuntimeError: A worker exited; the message names its log.
        """
        for index, proc in enumerate(self.procs):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} worker exited with {proc.returncode}; "
                    f"see {LOG_DIR / f'{self.name}-{index}.log'}"
                )

    def peak_rss_bytes(self) -> int:
        """Sum of VmHWM (peak resident set) over every live process of every worker tree.

        Returns:
            Bytes.
        """
        return sum(_vm_hwm(pid) for pid in self._tree_pids())

    def _tree_pids(self) -> list[int]:
        pids = [p.pid for p in self.procs if p.poll() is None]
        try:
            import psutil
        except ImportError:
            return pids + [pid for root in pids for pid in _children_proc(root)]
        found = list(pids)
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                found += [c.pid for c in psutil.Process(pid).children(recursive=True)]
        return found

    def stop(self) -> None:
        """SIGTERM each worker's process group, wait (bounded), then SIGKILL what is left."""
        for proc in self.procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + WORKER_STOP_TIMEOUT_S
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
        for proc in self.procs:
            # The group may hold children (prefork pool, persister) even after the leader exits.
            _signal_group(proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(KILL_WAIT_S)
        self.procs.clear()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # start_new_session: the group id is the leader's pid


def _vm_hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * KIB
    except (OSError, ValueError):
        return 0
    return 0


def _children_proc(root: int) -> list[int]:
    """Descendants of ``root`` from /proc (fallback when psutil is missing)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    stack = [root]
    while stack:
        for child in parents.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out
