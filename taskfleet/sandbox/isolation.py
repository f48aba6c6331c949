"""What the host allows (namespaces or not), per-run host uids, id maps and process sweeps."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Container
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from taskfleet.config.sandbox import SandboxSettings
from taskfleet.sandbox.launcher import NAMESPACE_FLAGS, SANDBOX_UID
from taskfleet.sandbox.result import Mode

PROBE_TIMEOUT_S = 10.0
#: Capability bits (``CapEff`` in /proc/self/status) needed to write a run's uid/gid maps.
CAP_SETGID, CAP_SETUID = 6, 7
SWEEP_TIMEOUT_S = 5.0
SWEEP_INTERVAL_S = 0.01
_PROBE = (
    "import ctypes,sys; libc=ctypes.CDLL(None,use_errno=True); "
    f"sys.exit(0 if libc.unshare({NAMESPACE_FLAGS})==0 else 1)"
)


class IsolationUnavailable(RuntimeError):
    """Namespaces are unavailable and the operator did not allow rlimits-only mode."""


def _can_map_ids() -> bool:
    """Whether this process may map a run to two host uids of its choice (CAP_SETUID, SETGID)."""
    status = Path("/proc/self/status").read_text()
    effective = int(
        next(ln.split()[1] for ln in status.splitlines() if ln.startswith("CapEff")), 16
    )
    return all(effective & (1 << cap) for cap in (CAP_SETUID, CAP_SETGID))


@lru_cache(maxsize=1)
def namespaces_unavailable_reason() -> str | None:
    """Why namespace mode cannot work here, or None when it can.

    It needs Linux, a process allowed to unshare user, mount, net, PID, IPC and UTS namespaces
    (probed once per process in a throwaway child: unshare changes the caller for good), and
    CAP_SETUID and CAP_SETGID to map each run to two fresh host uids.
    """
    if sys.platform != "linux":
        return f"namespaces need Linux, not {sys.platform}"
    if not _can_map_ids():
        return (
            f"the worker (uid {os.geteuid()}) lacks CAP_SETUID/CAP_SETGID, which map each run "
            "to two fresh host uids: run it as root, or in a container as root with only those "
            "capabilities added (see README, Sandbox)"
        )
    try:
        probe = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _PROBE],
            env={},
            capture_output=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the namespace probe failed: {exc}"
    if probe.returncode != 0:
        return (
            "this host does not let the worker unshare user/PID/network/mount namespaces "
            "(user namespaces disabled, or a container seccomp/AppArmor profile refusing them)"
        )
    return None


def namespaces_available() -> bool:
    """Whether runs can use namespace mode here (``namespaces_unavailable_reason`` says why not)."""
    return namespaces_unavailable_reason() is None


def choose_mode(settings: SandboxSettings) -> Mode:
    """The mode runs use here.

    Raises:
        IsolationUnavailable: no namespaces and ``TASKFLEET_SANDBOX_ALLOW_DEGRADED`` is false.
    """
    if namespaces_available():
        return "namespaces"
    if settings.allow_degraded:
        return "rlimits_only"
    raise IsolationUnavailable(
        f"sandbox isolation unavailable: {namespaces_unavailable_reason()}; set "
        "TASKFLEET_SANDBOX_ALLOW_DEGRADED=true to run with rlimits only"
    )


@dataclass(frozen=True)
class HostIds:
    """Two fresh host uids (and equal gids) for one run: namespace root, and the program."""

    root: int
    program: int

    @classmethod
    def allocate(cls, settings: SandboxSettings) -> HostIds:
        """A random pair from the operator's range, so concurrent runs do not share
        an RLIMIT_NPROC budget (it counts processes per uid) or each other's files."""
        root = settings.uid_base + 2 * secrets.randbelow(settings.uid_slots)
        return cls(root=root, program=root + 1)

    def id_map(self) -> str:
        """``uid_map``/``gid_map`` text: ns 0 -> ``root``, ns SANDBOX_UID -> ``program``."""
        return f"0 {self.root} 1\n{SANDBOX_UID} {self.program} 1\n"

    def write_maps(self, pid: int) -> None:
        """Install the maps on the launcher that just unshared its user namespace."""
        proc = Path(f"/proc/{pid}")
        (proc / "uid_map").write_text(self.id_map())
        (proc / "gid_map").write_text(self.id_map())


def _is_zombie(proc_dir: str) -> bool:
    """A dead process waiting for its parent to reap it (nothing left to kill)."""
    with open(f"{proc_dir}/stat", "rb") as stat:
        return stat.read().rsplit(b")", 1)[-1].split()[0] in (b"Z", b"X")


def pids_owned_by(uids: Container[int]) -> list[int]:
    """Live host processes owned by one of ``uids`` (the owner of ``/proc/<pid>``)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid in uids and not _is_zombie(entry.path):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def sandbox_processes(settings: SandboxSettings) -> list[int]:
    """Host processes of any sandbox run (any uid in the operator's sandbox range)."""
    return pids_owned_by(range(settings.uid_base, settings.uid_base + 2 * settings.uid_slots))


def sweep(ids: HostIds, timeout: float = SWEEP_TIMEOUT_S) -> int:
    """Kill every process of a run's uids until none is left; return how many were killed.

    Raises:
        RuntimeError: processes still alive at the deadline.
    """
    uids = {ids.root, ids.program}
    killed = 0
    deadline = time.monotonic() + timeout
    while pids := pids_owned_by(uids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"sandbox processes {pids} survived {timeout}s of SIGKILL")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                continue
        time.sleep(SWEEP_INTERVAL_S)
    return killed
