"""Process helpers of the fleet supervisor: child lifetime, signals, probes.

The generic pid, process-group, port and polling helpers are shared with the embedded
stack (:mod:`taskfleet.devstack.processes`, :mod:`taskfleet.devstack.polling`); this module
adds what only the supervisor needs.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

from taskfleet.devstack import processes as _shared
from taskfleet.devstack.polling import wait_until
from taskfleet.devstack.processes import group_members, signal_group
from taskfleet.fleet.children import Child, RestartFailed
from taskfleet.forked_worker import die_with_parent

PING_TIMEOUT_S = 0.5
"""Seconds one readiness ping (or port probe) waits for replies."""

KILL_TIMEOUT_S = 5.0
"""Seconds to wait for processes to vanish after SIGKILL."""


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    return _shared.port_open(host, port, PING_TIMEOUT_S)


def launch_child(child: Child, env: dict[str, str], *, append: bool = False) -> None:
    """Start ``child`` in its own session, its output in its log; sets ``child.popen``.

    Call from the main thread: on Linux the child is tied to the lifetime of the thread
    that started it (SIGTERM when it dies).

    Args:
        child: The child.
        env: Its full environment.
        append: Append to its log with a marker line (a restart) instead of truncating.

    Raises:
        RestartFailed: It could not be launched.
    """
    preexec = die_with_parent if sys.platform.startswith("linux") else None
    with child.log_path.open("ab" if append else "wb") as log:
        if append:
            log.write(f"--- {time.strftime('%FT%T%z')} restarted by taskfleet up\n".encode())
            log.flush()
        try:
            child.popen = subprocess.Popen(
                child.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=preexec,
            )
        except OSError as exc:
            raise RestartFailed(f"could not start {child.name}: {exc}") from exc


def celery_argv(argv: list[str]) -> list[str]:
    """Run a ``celery ...`` command line with this interpreter's Celery."""
    if argv and argv[0] == "celery":
        argv = argv[1:]
    return [sys.executable, "-m", "celery", *argv]


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


def stop_children(children: list[Child], timeout: float, kill_timeout: float) -> None:
    """Stop started children: SIGTERM, up to ``timeout`` s, then SIGKILL their groups.

    Whatever a child left behind in its process group is terminated too. A
    KeyboardInterrupt while waiting for the children kills at once. Children that needed
    SIGKILL get ``killed`` set.

    Args:
        children: The children (those never started are skipped).
        timeout: Seconds they get after SIGTERM.
        kill_timeout: Seconds to wait for processes to vanish after SIGKILL.
    """
    running = [c for c in children if c.popen is not None]
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
            signal_group(child.pid, signal.SIGKILL)
    wait_until(lambda: all(c.returncode() is not None for c in running), kill_timeout)
    sweep_groups([c.pid for c in running if c.pid is not None], kill_timeout)


def sweep_groups(groups: list[int], kill_timeout: float) -> None:
    """Terminate processes left in the children's groups after the leaders exited.

    Only groups that still have members are signalled: a group id stays reserved while
    one member lives, so an empty group's id is never someone else's.

    Args:
        groups: Process group ids (the children's pids).
        kill_timeout: Seconds to wait after SIGTERM, and again after SIGKILL.
    """

    def occupied() -> list[int]:
        return [g for g in groups if group_members(g)]

    for group in occupied():
        signal_group(group, signal.SIGTERM)
    if not wait_until(lambda: not occupied(), kill_timeout):
        for group in occupied():
            signal_group(group, signal.SIGKILL)
        wait_until(lambda: not occupied(), kill_timeout)
