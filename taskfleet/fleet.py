"""Process supervision for a local fleet: what ``taskfleet up`` and ``taskfleet demo`` run.

:class:`Fleet` runs a CPU worker, an I/O worker, beat and Flower as child processes sharing
one set of services, and stops them cleanly. Every child runs in its own session (process
group), so a terminal's Ctrl-C reaches only the supervisor, which then stops the children in
order; anything a child leaves behind in its group (prefork pool processes, the result
persister) is swept up after it exits. On Linux a child is also sent SIGTERM if the
supervisor dies without cleaning up.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

from celery import Celery
from kombu.utils.url import maybe_sanitize_url
from pydantic import SecretStr

from taskfleet.app import create_app
from taskfleet.config import ConfigError, ServiceURLs, Settings, resolve_services
from taskfleet.config.settings import ENV_PREFIX
from taskfleet.devstack import EmbeddedStack
from taskfleet.workers.profiles import APP_PATH, WorkerProfile, cpu_profile, io_profile

# --------------------------------------------------------------------------- fleet constants

DEFAULT_FLOWER_PORT = 5555
FLOWER_HOST = "127.0.0.1"
DEFAULT_FLOWER_USER = "admin"
FLOWER_PASSWORD_BYTES = 18
"""Random bytes in a generated Flower password (24 URL-safe characters)."""

DEFAULT_READY_TIMEOUT_S = 90.0
"""Seconds to wait for every worker to answer a ping (and Flower to listen)."""

DEFAULT_STOP_TIMEOUT_S = 30.0
"""Seconds children get to exit after SIGTERM (workers finish running jobs) before SIGKILL."""

KILL_TIMEOUT_S = 5.0
"""Seconds to wait for processes to vanish after SIGKILL."""

PING_TIMEOUT_S = 0.5
"""Seconds one readiness ping waits for replies."""

POLL_INTERVAL_S = 0.1
"""Pause between two checks of a condition that has a deadline."""

SUPERVISE_INTERVAL_S = 0.25
"""Pause between two liveness checks of the children while the fleet runs."""

LOG_DIR_NAME = "logs"
BEAT_SCHEDULE_NAME = "beat-schedule"
LOG_TAIL_LINES = 20

ChildRole = Literal["worker", "beat", "flower"]

_PR_SET_PDEATHSIG = 1
_URL_ENV = {
    "broker_url": f"{ENV_PREFIX}BROKER_URL",
    "redis_url": f"{ENV_PREFIX}REDIS_URL",
    "database_url": f"{ENV_PREFIX}DATABASE_URL",
}
_SECRET_ENV = f"{ENV_PREFIX}FLOWER_BASIC_AUTH"
_FLOWER_AUTH_ENV = "FLOWER_BASIC_AUTH"


class Deadline:
    """A point in time polling loops give up at.

    Args:
        timeout: Seconds from now.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.end = time.monotonic() + timeout

    def remaining(self) -> float:
        """Seconds left (never negative)."""
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        """Whether the deadline has passed."""
        return time.monotonic() >= self.end

    def pause(self, interval: float = POLL_INTERVAL_S) -> None:
        """Sleep ``interval`` seconds, or less if the deadline comes first."""
        time.sleep(min(interval, self.remaining()))


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed.

    Args:
        predicate: The condition.
        timeout: Seconds to keep trying.

    Returns:
        Whether the condition became true in time.
    """
    deadline = Deadline(timeout)
    while not predicate():
        if deadline.expired():
            return False
        deadline.pause()
    return True


def sanitize_url(url: str) -> str:
    """``url`` with any password masked, for display."""
    return str(maybe_sanitize_url(url))


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a text file (``""`` when unreadable)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            data = fh.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=PING_TIMEOUT_S):
            return True
    except OSError:
        return False


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of ``pid`` from ``/proc``, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw.rsplit(b")", 1)[-1].split()  # comm may contain spaces and parentheses
    try:
        return fields[0].decode(), int(fields[2])
    except (IndexError, ValueError):
        return None


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
        info = _proc_stat(int(entry.name))
        if info is not None and info[1] == pgid and info[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """Ask Linux to SIGTERM this (child) process when its parent dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def _env_value(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def settings_env(settings: Settings, urls: ServiceURLs) -> dict[str, str | None]:
    """``TASKFLEET_*`` variables that make a child process see exactly ``settings``.

    Fields set explicitly (environment, ``.env`` or constructor) are exported, the service
    URLs are always the resolved ones (so every child shares one stack), the data folder is
    absolute, and the Flower secret is left out (only Flower gets it, under its own name).
    A value of None means "remove this variable".
    """
    env: dict[str, str | None] = {}
    for name in settings.model_fields_set:
        env[f"{ENV_PREFIX}{name.upper()}"] = _env_value(getattr(settings, name))
    env[_URL_ENV["broker_url"]] = urls.broker_url
    env[_URL_ENV["redis_url"]] = urls.redis_url
    env[_URL_ENV["database_url"]] = urls.database_url
    env[f"{ENV_PREFIX}DATA_DIR"] = os.path.abspath(settings.data_dir)
    env[_SECRET_ENV] = None
    return env


def needs_embedded_stack(settings: Settings) -> bool:
    """Whether :func:`resolve_services` has to use the embedded stack for these settings."""
    broker, redis_url = settings.broker_url, settings.redis_url
    if redis_url is None and broker is not None and settings.broker_is_redis:
        redis_url = broker
    if broker is None and redis_url is not None:
        broker = redis_url
    return broker is None or redis_url is None or settings.database_url is None


# --------------------------------------------------------------------------- fleet


class FleetError(RuntimeError):
    """The fleet could not start, or stopped being healthy."""


class ChildDied(FleetError):
    """A child process exited while it should have been running.

    Attributes:
        child: The child that exited.
        returncode: Its exit status (negative: killed by that signal).
    """

    def __init__(self, child: Child, returncode: int) -> None:
        super().__init__(
            f"{child.name} (pid {child.pid}) exited unexpectedly with status {returncode}; "
            f"log: {child.log_path}"
        )
        self.child = child
        self.returncode = returncode


@dataclass(frozen=True)
class FlowerAuth:
    """Flower's basic-auth credentials.

    Attributes:
        user: User name.
        password: Password.
        generated: True when taskfleet generated the password (print it once).
    """

    user: str
    password: str = field(repr=False)
    generated: bool

    @property
    def env_value(self) -> str:
        """The ``user:password`` value Flower reads from ``FLOWER_BASIC_AUTH``."""
        return f"{self.user}:{self.password}"


def flower_auth(settings: Settings) -> FlowerAuth:
    """The configured Flower credentials, or ``admin`` with a fresh random password.

    Raises:
        ConfigError: ``TASKFLEET_FLOWER_BASIC_AUTH`` is not ``user:password``.
    """
    if settings.flower_basic_auth is None:
        return FlowerAuth(
            DEFAULT_FLOWER_USER, secrets.token_urlsafe(FLOWER_PASSWORD_BYTES), generated=True
        )
    user, sep, password = settings.flower_basic_auth.get_secret_value().partition(":")
    if not sep or not user or not password or "," in user or "," in password:
        raise ConfigError(f"{_SECRET_ENV} must be 'user:password' (both non-empty, no commas)")
    return FlowerAuth(user, password, generated=False)


@dataclass(frozen=True)
class FleetOptions:
    """What a :class:`Fleet` runs.

    Attributes:
        cpu_concurrency: CPU worker processes (default: the settings').
        io_concurrency: I/O worker greenlets (default: the settings').
        flower: Run Flower.
        flower_port: Flower's port on 127.0.0.1.
        beat: Run ``celery beat``.
        keep_services: Leave an embedded stack this fleet started running on stop.
    """

    cpu_concurrency: int | None = None
    io_concurrency: int | None = None
    flower: bool = True
    flower_port: int = DEFAULT_FLOWER_PORT
    beat: bool = True
    keep_services: bool = False


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
        extra_env: Variables only this child gets (Flower's credentials).
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
    extra_env: dict[str, str] = field(default_factory=dict, repr=False)
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    killed: bool = False

    @property
    def pid(self) -> int | None:
        """Its pid once started."""
        return self.popen.pid if self.popen is not None else None

    def returncode(self) -> int | None:
        """Its exit status if it has exited (reaps it), else None."""
        return self.popen.poll() if self.popen is not None else None


class Fleet:
    """A CPU worker, an I/O worker, beat and Flower run as supervised children.

    Usage::

        with Fleet(settings, FleetOptions(flower=False)) as fleet:
            fleet.wait_ready()
            ...                       # fleet.check() raises ChildDied if one exited

    Args:
        settings: Validated settings; children see exactly these (see :func:`settings_env`).
        options: What to run.
    """

    def __init__(self, settings: Settings, options: FleetOptions | None = None) -> None:
        self.settings = settings
        self.options = options or FleetOptions()
        self.data_dir = Path(os.path.abspath(settings.data_dir))
        self.log_dir = self.data_dir / LOG_DIR_NAME
        self.children: list[Child] = []
        self.urls: ServiceURLs | None = None
        self.started_stack = False
        self.stack_stopped = False
        self.auth: FlowerAuth | None = None
        self._control_app: Celery | None = None

    # ------------------------------------------------------------------ context manager

    def __enter__(self) -> Fleet:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ starting

    @property
    def control_app(self) -> Celery:
        """A Celery app bound to this fleet's settings (for pings and publishing)."""
        if self._control_app is None:
            self._control_app = create_app(self.settings)
        return self._control_app

    def resolve(self) -> ServiceURLs:
        """Resolve the service URLs, starting the embedded stack if needed; remember if we did.

        Raises:
            taskfleet.devstack.DevStackError: The embedded stack could not start.
        """
        if self.urls is None:
            if needs_embedded_stack(self.settings):
                status = EmbeddedStack(self.data_dir).status()
                was_running = all(
                    isinstance(entry, dict) and entry.get("running")
                    for entry in (status["redis"], status["postgres"])
                )
                self.urls = resolve_services(self.settings)
                self.started_stack = not was_running
            else:
                self.urls = resolve_services(self.settings)
        return self.urls

    def _plan(self) -> list[Child]:
        host = socket.gethostname()
        tag = os.getpid()
        broker = sanitize_url(self.resolve().broker_url)
        level = self.settings.log_level
        plan: list[Child] = []
        profiles: Sequence[tuple[str, WorkerProfile]] = (
            ("cpu-worker", cpu_profile(self.settings, self.options.cpu_concurrency)),
            ("io-worker", io_profile(self.settings, self.options.io_concurrency)),
        )
        for name, profile in profiles:
            nodename = f"{profile.name}-{tag}@{host}"
            argv = profile.argv(hostname=nodename, loglevel=level)
            plan.append(
                Child(
                    name=name,
                    role="worker",
                    argv=_celery(argv),
                    log_path=self.log_dir / f"{name}.log",
                    url=broker,
                    detail=(
                        f"{profile.pool} x{profile.concurrency}, queues {', '.join(profile.queues)}"
                    ),
                    nodename=nodename,
                )
            )
        if self.options.beat:
            schedule = self.data_dir / BEAT_SCHEDULE_NAME
            plan.append(
                Child(
                    name="beat",
                    role="beat",
                    argv=_celery(
                        ["celery", "-A", APP_PATH, "beat", "-s", str(schedule), "-l", level]
                    ),
                    log_path=self.log_dir / "beat.log",
                    url=broker,
                    detail=f"schedule {schedule}",
                )
            )
        if self.options.flower:
            port = self.options.flower_port
            self.auth = self.auth or flower_auth(self.settings)
            plan.append(
                Child(
                    name="flower",
                    role="flower",
                    # The credentials go in Flower's environment, not its argv: a command
                    # line is readable by every user of the machine (ps, /proc).
                    argv=_celery(
                        [
                            "celery",
                            "-A",
                            APP_PATH,
                            "flower",
                            f"--port={port}",
                            f"--address={FLOWER_HOST}",
                        ]
                    ),
                    log_path=self.log_dir / "flower.log",
                    url=f"http://{FLOWER_HOST}:{port}",
                    detail=f"basic auth, user {self.auth.user}",
                    extra_env={_FLOWER_AUTH_ENV: self.auth.env_value},
                )
            )
        return plan

    def _child_env(self, child: Child) -> dict[str, str]:
        env = dict(os.environ)
        for key, value in settings_env(self.settings, self.resolve()).items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        env.pop(_FLOWER_AUTH_ENV, None)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(child.extra_env)
        return env

    def start(self) -> None:
        """Resolve the services, then start every child (without waiting for readiness).

        Call from the main thread: on Linux each child is tied to the lifetime of the
        thread that started it.

        Raises:
            FleetError: Flower's port is taken, or a child could not be launched.
            ConfigError: The Flower credentials are malformed.
            taskfleet.devstack.DevStackError: The embedded stack could not start.
        """
        if self.children:
            raise FleetError("fleet already started")
        if self.options.flower and not port_free(FLOWER_HOST, self.options.flower_port):
            raise FleetError(
                f"port {self.options.flower_port} on {FLOWER_HOST} is in use; "
                "choose another with --flower-port or use --no-flower"
            )
        if self.options.flower:
            self.auth = flower_auth(self.settings)  # validated before anything starts
        self.resolve()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        plan = self._plan()
        preexec = _die_with_parent if sys.platform.startswith("linux") else None
        try:
            for child in plan:
                with child.log_path.open("wb") as log:
                    try:
                        child.popen = subprocess.Popen(
                            child.argv,
                            stdin=subprocess.DEVNULL,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            env=self._child_env(child),
                            start_new_session=True,
                            preexec_fn=preexec,
                        )
                    except OSError as exc:
                        raise FleetError(f"could not start {child.name}: {exc}") from exc
                self.children.append(child)
        except BaseException:
            self.stop()
            raise

    # ------------------------------------------------------------------ health

    def check(self) -> None:
        """Raise if any child has exited.

        Raises:
            ChildDied: The first child found dead.
        """
        for child in self.children:
            code = child.returncode()
            if code is not None:
                raise ChildDied(child, code)

    def wait_ready(self, timeout: float = DEFAULT_READY_TIMEOUT_S) -> float:
        """Wait until both workers answer a ping and Flower (if run) accepts connections.

        Args:
            timeout: Seconds to wait.

        Returns:
            Seconds it took.

        Raises:
            ChildDied: A child exited while starting.
            FleetError: Not ready within ``timeout`` (the message says what is missing).
        """
        started = time.monotonic()
        deadline = Deadline(timeout)
        pending = {c.nodename for c in self.children if c.nodename is not None}
        flower = next((c for c in self.children if c.role == "flower"), None)
        flower_up = flower is None
        while True:
            self.check()
            if pending:
                replies = self.control_app.control.ping(
                    destination=sorted(pending),
                    timeout=min(PING_TIMEOUT_S, max(deadline.remaining(), 0.05)),
                )
                for reply in replies or []:
                    pending.difference_update(reply)
            if not flower_up:
                flower_up = port_open(FLOWER_HOST, self.options.flower_port)
            if not pending and flower_up:
                return time.monotonic() - started
            if deadline.expired():
                missing = sorted(pending) + ([] if flower_up else ["flower"])
                raise FleetError(
                    f"fleet not ready after {timeout:.0f}s; no answer from: "
                    f"{', '.join(missing)} (logs in {self.log_dir})"
                )
            if not pending:
                deadline.pause()

    def supervise(self, interval: float = SUPERVISE_INTERVAL_S) -> None:
        """Block while every child runs.

        Raises:
            ChildDied: As soon as one exits.
        """
        while True:
            self.check()
            time.sleep(interval)

    # ------------------------------------------------------------------ stopping

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Stop every child, then the embedded stack if this fleet started it.

        Each child gets SIGTERM (a worker's warm shutdown: it finishes its running jobs
        and stops its pool and persister itself) and ``timeout`` seconds; then its whole
        process group is killed. Whatever a child left behind in its group is terminated
        too. A KeyboardInterrupt while waiting kills at once. Idempotent.

        Args:
            timeout: Seconds children get after SIGTERM.

        Raises:
            taskfleet.devstack.DevStackError: The embedded stack could not be stopped.
        """
        running = [c for c in self.children if c.popen is not None]
        for child in running:
            if child.returncode() is None:
                assert child.popen is not None
                with contextlib.suppress(ProcessLookupError):
                    child.popen.send_signal(signal.SIGTERM)
        with contextlib.suppress(KeyboardInterrupt):  # asked twice: no more waiting
            wait_until(lambda: all(c.returncode() is not None for c in running), timeout)
        for child in running:
            assert child.pid is not None
            if child.returncode() is None:
                child.killed = True
                _signal_group(child.pid, signal.SIGKILL)
        wait_until(lambda: all(c.returncode() is not None for c in running), KILL_TIMEOUT_S)
        self._sweep([c.pid for c in running if c.pid is not None])
        if self._control_app is not None:
            self._control_app.close()
            self._control_app = None
        if self.started_stack and not self.options.keep_services and not self.stack_stopped:
            EmbeddedStack(self.data_dir).stop()
            self.stack_stopped = True

    @staticmethod
    def _sweep(groups: list[int]) -> None:
        """Terminate processes left in the children's groups after the leaders exited.

        Only groups that still have members are signalled: a group id stays reserved while
        one member lives, so an empty group's id is never someone else's.
        """

        def occupied() -> list[int]:
            return [g for g in groups if group_members(g)]

        for group in occupied():
            _signal_group(group, signal.SIGTERM)
        if not wait_until(lambda: not occupied(), KILL_TIMEOUT_S):
            for group in occupied():
                _signal_group(group, signal.SIGKILL)
            wait_until(lambda: not occupied(), KILL_TIMEOUT_S)

    def leftovers(self) -> list[int]:
        """Pids still alive in the children's process groups (empty after a clean stop)."""
        return [p for c in self.children if c.pid is not None for p in group_members(c.pid)]


def _celery(argv: list[str]) -> list[str]:
    """Run a ``celery ...`` command line with this interpreter's Celery."""
    if argv and argv[0] == "celery":
        argv = argv[1:]
    return [sys.executable, "-m", "celery", *argv]


# --------------------------------------------------------------------------- workload


@contextlib.contextmanager
def signals_raise_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt (like Ctrl-C) inside the block."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
