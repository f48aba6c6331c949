"""The worker's watch over its result persister: started again when it exits or stalls.

The worker's main process starts the persister process (``workers/signals.start_persister``)
through a :class:`PersisterWatch`. The persister touches a heartbeat file on every turn of
its loop, and on every retry while Redis or Postgres is away (at most once a second:
:class:`Heartbeat`). Every ``WATCH_INTERVAL_S`` the watch looks: a persister that exited (a
crash, the OOM killer, a stray SIGKILL) is started again; one whose heartbeat is older than
``TASKFLEET_PERSISTER_STUCK_S`` (default 60 s: a hung call) is killed and started again.
Both are logged and counted (``restarts``). What the old process held is pending in the
stream under its consumer name; the new one claims it once idle (``XAUTOCLAIM``): at least
once, and every row is an upsert.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from taskfleet.workers.spawn import start_process

#: The persister process touches the file this names (set by the watch).
HEARTBEAT_FILE_ENV = "TASKFLEET_PERSISTER_HEARTBEAT_FILE"
#: Seconds without a heartbeat after which a running persister counts as stuck.
STUCK_ENV = "TASKFLEET_PERSISTER_STUCK_S"
DEFAULT_STUCK_S = 60.0
WATCH_INTERVAL_S = 1.0
#: The persister touches its heartbeat at most this often.
BEAT_INTERVAL_S = 1.0

log = logging.getLogger(__name__)


class Heartbeat:
    """The persister's side: touch the file named by ``HEARTBEAT_FILE_ENV``, if any."""

    def __init__(self, path: str | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.clock = clock
        self._last = float("-inf")

    def beat(self) -> None:
        """Touch the file (at most once per ``BEAT_INTERVAL_S``)."""
        now = self.clock()
        if self.path is None or now - self._last < BEAT_INTERVAL_S:
            return
        self._last = now
        with contextlib.suppress(OSError):
            os.utime(self.path)


def stuck_after() -> float:
    """``TASKFLEET_PERSISTER_STUCK_S`` (seconds), or the default."""
    try:
        return max(1.0, float(os.environ.get(STUCK_ENV, DEFAULT_STUCK_S)))
    except ValueError:
        return DEFAULT_STUCK_S


class PersisterWatch:
    """Runs ``command`` as the persister and keeps it running (module docstring)."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        stuck_s: float,
        interval_s: float = WATCH_INTERVAL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.command = list(command)
        self.stuck_s = stuck_s
        self.interval_s = interval_s
        self.clock = clock
        fd, name = tempfile.mkstemp(prefix="taskfleet-persister-", suffix=".alive")
        os.close(fd)
        self.heartbeat = Path(name)
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.heartbeat.touch()
        env = {**os.environ, HEARTBEAT_FILE_ENV: str(self.heartbeat)}
        return start_process(self.command, env=env)

    def start(self) -> None:
        """Start the persister and the watch thread."""
        self.proc = self._spawn()
        self._thread = threading.Thread(target=self._run, name="taskfleet-persister-watch")
        self._thread.daemon = True
        self._thread.start()

    def check(self) -> str | None:
        """One look: why the persister was started again, or None if it is well."""
        proc = self.proc
        if proc is None:
            return None
        code = proc.poll()
        if code is not None:
            reason = f"exited with status {code}"
        else:
            try:
                age = self.clock() - self.heartbeat.stat().st_mtime
            except FileNotFoundError:  # removed under us (a /tmp cleaner): start counting anew
                self.heartbeat.touch()
                return None
            if age < self.stuck_s:
                return None
            reason = f"made no progress for {age:.0f}s (TASKFLEET_PERSISTER_STUCK_S)"
            proc.kill()
            proc.wait()
        self.proc = self._spawn()
        self.restarts += 1
        log.warning(
            "taskfleet: result persister (pid %s) %s; started pid %s",
            proc.pid, reason, self.proc.pid,
        )  # fmt: skip
        return reason

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except OSError as exc:  # e.g. /tmp not writable: say so, keep watching
                log.warning("taskfleet: persister watch: %s", exc)

    def stop(self, timeout_s: float) -> None:
        """Stop watching, then the persister (SIGTERM: it writes what it holds)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval_s + 1)
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        self.heartbeat.unlink(missing_ok=True)
