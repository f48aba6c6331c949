"""Process and port helpers shared by the embedded stack and the fleet supervisor.

Pid liveness (zombies count as dead), ``/proc`` inspection, signalling and TCP port
probes. POSIX only; ``/proc`` is used where there is one (Linux) and the helpers degrade
to plain liveness checks elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from pathlib import Path

from taskfleet.devstack.polling import wait_until

# --------------------------------------------------------------------------- processes


def _stat_fields(raw: bytes) -> list[bytes]:
    """Fields of ``/proc/<pid>/stat`` after the command name (state first).

    The command name may contain spaces and parentheses: the fields follow the last ")".
    """
    return raw.rsplit(b")", 1)[-1].split()


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of ``pid`` from ``/proc``, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = _stat_fields(raw)
    try:
        return fields[0].decode(), int(fields[2])
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (non-zombie) process."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # vanished, or no /proc on this OS
    except OSError:
        return True
    fields = _stat_fields(raw)
    return not (fields and fields[0] in (b"Z", b"X"))


def proc_name(pid: int) -> str | None:
    """The command name of ``pid`` (``/proc/<pid>/comm``), or None."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def proc_title(pid: int) -> str:
    """The command line (process title) of ``pid``, space-separated (``""`` if unknown)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()


def proc_cwd(pid: int) -> str | None:
    """The working directory of ``pid``, or None."""
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def is_server_process(pid: int, workdir: Path) -> bool:
    """Whether ``pid`` is alive and is a server working in ``workdir``.

    Both redis-server (``--dir``) and postgres (PGDATA) chdir into their data folder, so on
    Linux the process's cwd tells a live server of ours from an unrelated process that got
    the same pid after a reboot. Without ``/proc`` only liveness is checked.
    """
    if not pid_alive(pid):
        return False
    if not Path("/proc/self/cwd").exists():
        return True
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except PermissionError:
        return True  # cannot tell; trust the pidfile
    except OSError:
        return False
    return cwd == os.path.realpath(workdir)


def processes_in(workdir: Path, name: str) -> list[int]:
    """Pids of live processes called ``name`` whose cwd is ``workdir`` (or it, deleted).

    Used to find leftovers: orphaned postgres children after the postmaster was killed,
    or servers still running in a data folder that was deleted without stopping them.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    target = os.path.realpath(workdir)
    wanted = {target, f"{target} (deleted)"}
    me = os.getpid()
    found: list[int] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == me or proc_name(pid) != name:
            continue
        if proc_cwd(pid) in wanted and pid_alive(pid):
            found.append(pid)
    return found


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``.

    Uses ``/proc`` where there is one (so zombies never count as alive); elsewhere the
    group leader's pid is returned while ``killpg(pgid, 0)`` succeeds.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members: list[int] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        info = proc_stat(int(entry.name))
        if info is not None and info[1] == pgid and info[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def signal_pid(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to ``pid``, ignoring a process that is gone or not ours."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to process group ``pgid``, ignoring a group that is gone or not ours."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def terminate(pids: list[int], timeout: float, kill_timeout: float) -> list[int]:
    """SIGTERM ``pids``, wait up to ``timeout``, then SIGKILL.

    Args:
        pids: The processes.
        timeout: Seconds they get to exit after SIGTERM.
        kill_timeout: Seconds to wait for them to vanish after SIGKILL.

    Returns:
        The pids still alive.
    """
    for pid in pids:
        signal_pid(pid, signal.SIGTERM)
    if not wait_until(lambda: not any(pid_alive(p) for p in pids), timeout, backoff=True):
        for pid in pids:
            signal_pid(pid, signal.SIGKILL)
        wait_until(lambda: not any(pid_alive(p) for p in pids), kill_timeout, backoff=True)
    return [p for p in pids if pid_alive(p)]


# --------------------------------------------------------------------------- ports


def port_open(host: str, port: int, timeout: float) -> bool:
    """Whether something accepts TCP connections on ``host:port`` within ``timeout`` s."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now.

    ``SO_REUSEADDR`` mirrors what servers do, so TIME_WAIT leftovers of a previous run do
    not count as taken, while any listener does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
