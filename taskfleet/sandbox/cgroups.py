"""Whole-run limits through a delegated cgroup v2: one child cgroup per sandbox run.

Rlimits bound each process of a run (32 processes x 256 MiB is 8 GiB). Where the operator
gives the worker a delegated cgroup v2 directory (``TASKFLEET_SANDBOX_CGROUP_ROOT``: writable
by the worker, with the ``memory``, ``pids`` and ``cpu`` controllers available), every run
gets a child cgroup of it, ``run-<hex>``, and the launcher is moved into it before the run
starts, so every process of the run is in it:

- ``memory.max`` = the run's ``memory_bytes`` for the whole run, no swap, and
  ``memory.oom.group`` = 1: on breach the kernel kills the whole run at once;
- ``pids.max`` = ``processes`` plus the launcher and the namespace's init;
- ``cpu.max`` = ``TASKFLEET_SANDBOX_CGROUP_CPUS`` cores.

The result names the limit that stopped the run from ``memory.events`` (``oom_kill``) and
``pids.events`` (``max``). At the end the run's cgroup is killed (``cgroup.kill``, Linux
5.14+; else each process in ``cgroup.procs``) and removed. Without delegation, runs keep
per-process rlimits only, and the result (``limits_scope``, ``limits_note``) and
``taskfleet up`` say so.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from taskfleet.sandbox.limits import LimitName, SandboxLimits

CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000
#: The launcher and the namespace's init are in the run's cgroup with the program.
SUPERVISOR_PROCESSES = 2
EMPTY_TIMEOUT_S = 5.0
EMPTY_POLL_S = 0.005
NOT_CONFIGURED = "no delegated cgroup v2 configured (TASKFLEET_SANDBOX_CGROUP_ROOT is unset)"


@dataclass(frozen=True)
class CgroupSupport:
    """Whether runs get a cgroup of their own: ``root`` if so, else ``reason`` says why not."""

    root: Path | None
    reason: str = ""

    def note(self) -> str:
        """One line for the result and ``taskfleet up``."""
        if self.root is not None:
            return f"whole-run limits: memory, pids and cpu per run under the cgroup {self.root}"
        return f"limits are per process only (memory, processes, CPU): {self.reason}"


def _controllers(path: Path, name: str) -> set[str]:
    return set((path / name).read_text().split())


def _enable(cgroup: Path) -> str | None:
    """Enable the controllers for ``cgroup``'s children; why not, if it could not."""
    disabled = [c for c in CONTROLLERS if c not in _controllers(cgroup, "cgroup.subtree_control")]
    if disabled:
        try:
            (cgroup / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in disabled))
        except OSError as exc:
            return f"cannot enable {', '.join(disabled)} in {cgroup}: {exc}"
    return None


def probe(root_setting: str | None) -> CgroupSupport:
    """Decide whether ``root_setting`` is a usable delegated cgroup v2 directory.

    Creates it when its parent is a cgroup the worker may write (systemd ``Delegate=yes``
    with ``DelegateSubgroup=``: the worker in one child, the runs' root a sibling), and
    enables the three controllers for its children when they are available but not enabled
    (a cgroup that holds processes itself cannot: the runs need a cgroup of their own).
    """
    if not root_setting:
        return CgroupSupport(None, NOT_CONFIGURED)
    root = Path(root_setting)
    parent = root.parent
    if not root.exists() and (parent / "cgroup.controllers").is_file():
        try:
            why_not = _enable(parent)
            root.mkdir()
        except OSError as exc:
            why_not = f"cannot create {root}: {exc}"
        if why_not:
            return CgroupSupport(None, why_not)
    if not (root / "cgroup.controllers").is_file():
        return CgroupSupport(None, f"{root} is not a cgroup v2 directory")
    if not os.access(root / "cgroup.subtree_control", os.W_OK) or not os.access(root, os.W_OK):
        return CgroupSupport(None, f"{root} is not delegated to this worker (uid {os.geteuid()})")
    missing = [c for c in CONTROLLERS if c not in _controllers(root, "cgroup.controllers")]
    if missing:
        return CgroupSupport(
            None,
            f"controller(s) {', '.join(missing)} not available in {root} (held by a cgroup v1 "
            "hierarchy, or not delegated by the parent)",
        )
    why_not = _enable(root)
    return CgroupSupport(None, why_not) if why_not else CgroupSupport(root)


def _events(path: Path) -> dict[str, int]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    return {key: int(value) for key, value in (line.split() for line in lines)}


@dataclass(frozen=True)
class RunCgroup:
    """The cgroup of one run."""

    path: Path

    @classmethod
    def create(cls, root: Path, limits: SandboxLimits, cpus: float) -> RunCgroup:
        """Make ``run-<hex>`` under ``root`` with the run's limits written."""
        path = root / f"run-{secrets.token_hex(8)}"
        path.mkdir()
        cgroup = cls(path)
        try:
            cgroup.write("memory.max", limits.memory_bytes)
            cgroup.write("memory.swap.max", 0, optional=True)
            cgroup.write("memory.oom.group", 1)
            cgroup.write("pids.max", limits.processes + SUPERVISOR_PROCESSES)
            cgroup.write("cpu.max", f"{round(cpus * CPU_PERIOD_US)} {CPU_PERIOD_US}")
        except OSError:
            cgroup.remove()
            raise
        return cgroup

    def write(self, name: str, value: object, *, optional: bool = False) -> None:
        """Write one interface file (``optional``: skip it where the kernel lacks it)."""
        if optional and not (self.path / name).exists():
            return
        (self.path / name).write_text(str(value))

    def attach(self, pid: int) -> None:
        """Move ``pid`` (the run's launcher, before it forks) into this cgroup."""
        self.write("cgroup.procs", pid)

    def breached(self) -> LimitName | None:
        """The whole-run limit that bit: ``memory`` (an OOM kill) or ``processes``."""
        if _events(self.path / "memory.events").get("oom_kill", 0) > 0:
            return "memory"
        if _events(self.path / "pids.events").get("max", 0) > 0:
            return "processes"
        return None

    def kill(self) -> None:
        """SIGKILL every process of the run."""
        if (self.path / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                self.write("cgroup.kill", 1)
            return
        for pid in self._procs():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _procs(self) -> list[int]:
        try:
            return [int(pid) for pid in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def remove(self) -> None:
        """Kill what is left, wait until the cgroup is empty, then delete it.

        An empty ``cgroup.procs`` is not yet an empty cgroup: killed tasks (an OOM-killed
        group, say) leave the list before the kernel has released them, and until then
        ``rmdir`` fails with EBUSY. So the delete is retried, within the same deadline.

        Raises:
            RuntimeError: not empty after ``EMPTY_TIMEOUT_S`` of SIGKILL.
        """
        deadline = time.monotonic() + EMPTY_TIMEOUT_S
        while True:
            procs = self._procs()
            if procs:
                self.kill()
            else:
                try:
                    self.path.rmdir()
                    return
                except FileNotFoundError:
                    return
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        raise
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.path}: not empty after {EMPTY_TIMEOUT_S:.0f}s of SIGKILL "
                    f"(processes {procs})"
                )
            time.sleep(EMPTY_POLL_S)

    def close(self) -> LimitName | None:
        """End of the run: which whole-run limit stopped it, if one did; then remove it."""
        limit = self.breached()
        self.remove()
        return limit
