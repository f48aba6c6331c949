"""Solo CPU workers forked from a warm process: a fraction of an interpreter's start each.

A prefork pool grows by a fork; a solo worker is a whole worker, and launched as a new
interpreter it first imports Celery, kombu, redis-py and pydantic (0.72 s of CPU here) on a
host that is busy by definition when the pool grows. ``taskfleet up`` therefore starts its
solo CPU workers (the first ones, the scaler's and every restart) through a fork server:
the standard library's ``multiprocessing`` fork server, a process started once that imports
:data:`PRELOAD` and then forks one process per worker. Each forked worker:

* leads a new session (the supervisor signals and sweeps its process group, as for a
  launched one) and gets SIGTERM when the fork server dies, which it does with the
  supervisor;
* writes to its own log, and takes its own environment (``os.environ`` replaced) before it
  imports anything of taskfleet's: taskfleet's modules (0.15 s) and the app's settings are
  read in the worker, as in a launched one (:mod:`taskfleet.forked_worker`, the code the
  fork server runs, imports none of them);
* runs its command line in-process with its usual arguments: Celery's ``worker`` command
  through :mod:`taskfleet.workers.main` (or ``celery.__main__`` with
  ``TASKFLEET_LEAN_WORKER_CLI=false``).

The supervisor holds a :class:`ForkedWorker`, the part of ``subprocess.Popen`` it uses.
``TASKFLEET_FORK_WORKERS=false`` launches every worker as a new interpreter instead. When the
fork server cannot be started or fails, a worker is launched the usual way.

Hand-written around the standard library's fork server, which has no notion of sessions,
logs or per-child environments.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

from taskfleet.fleet.children import Child
from taskfleet.forked_worker import ENTRY_MODULES, run_worker
from taskfleet.workers.profiles import DISABLE_PERSISTER_ENV
from taskfleet.workers.standby import STANDBY_GROUP_ENV

log = logging.getLogger(__name__)

#: What the fork server imports once and every forked worker shares: the third-party part of
#: a solo worker's imports. taskfleet's own modules are left to each worker (they read
#: settings from its environment).
PRELOAD = (
    "celery.bin.worker",
    "celery.app.utils",
    "celery.apps.worker",
    "celery.worker.consumer",
    "celery.concurrency.solo",
    "celery.backends.redis",
    "kombu.transport.redis",
    "redis",
    "pydantic_settings",
    "taskfleet.forked_worker",
)
#: What one worker's environment has and another's not: kept out of the fork server's, which
#: is a worker's without them (everything a preloaded module reads at import is the same for
#: every worker of the fleet: ``PROMETHEUS_MULTIPROC_DIR``, read by prometheus-client, which
#: Flower's command-line plugin loads, at import, is one).
PER_WORKER_ENV = (DISABLE_PERSISTER_ENV, STANDBY_GROUP_ENV)


class ForkedWorker:
    """A forked worker, as the supervisor sees a child: ``pid``, ``poll``, ``send_signal``.

    Args:
        process: The started ``multiprocessing`` process.
    """

    def __init__(self, process: Any) -> None:
        """Wrap ``process``."""
        self._process = process
        self.pid: int = process.pid

    @property
    def returncode(self) -> int | None:
        """Its exit status (negative: the signal that killed it), None while it runs."""
        return self.poll()

    def poll(self) -> int | None:
        """Its exit status if it has exited, else None (never blocks)."""
        code = self._process.exitcode
        return None if code is None else int(code)

    def send_signal(self, sig: int) -> None:
        """Signal it, unless it has exited (as ``Popen.send_signal``)."""
        if self.poll() is None:
            os.kill(self.pid, sig)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for it to exit; its exit status.

        Raises:
            subprocess.TimeoutExpired: It still runs after ``timeout`` seconds.
        """
        self._process.join(timeout)
        code = self.poll()
        if code is None:
            raise subprocess.TimeoutExpired(f"forked worker {self.pid}", timeout or 0.0)
        return code

    def terminate(self) -> None:
        """SIGTERM."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL."""
        self.send_signal(signal.SIGKILL)


class WorkerForkServer:
    """Forks solo workers from the standard library's fork server (see the module doc)."""

    def __init__(self) -> None:
        """Nothing starts until :meth:`warm` or the first :meth:`start`."""
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(list(PRELOAD))
        self.failed = False

    def warm(self, env: dict[str, str]) -> bool:
        """Start the fork server unless it runs (again, if it died), with ``env`` as its
        environment; whether it runs.

        The standard library starts it with this process's environment; the supervisor's
        may hold what no worker gets (``fleet/environment.py`` filters it), so it is
        swapped for the workers' for the moment of the start.
        """
        from multiprocessing import forkserver

        saved = dict(os.environ)
        try:
            os.environ.clear()
            os.environ.update(env)
            forkserver.ensure_running()
        except (OSError, ValueError) as exc:
            self.failed = True
            log.warning("fork server unavailable, workers start as new interpreters: %s", exc)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        return not self.failed

    def start(self, child: Child, env: dict[str, str], *, append: bool) -> bool:
        """Fork ``child``; whether it was (False: launch it the usual way).

        Its log is truncated, or on a restart appended to with a marker line, as a launched
        child's. A fork server that fails is not asked again.
        """
        if self.failed or not forkable_argv(child.argv) or not main_is_import_safe():
            return False
        if not self.warm({k: v for k, v in env.items() if k not in PER_WORKER_ENV}):
            return False
        with child.log_path.open("ab" if append else "wb") as out:
            if append:
                out.write(f"--- {_stamp()} restarted by taskfleet up (forked)\n".encode())
        process = self._context.Process(
            target=run_worker,
            args=(child.argv, env, str(child.log_path)),
            name=child.name,
        )
        try:
            process.start()
        except (OSError, EOFError, ValueError) as exc:
            self.failed = True
            log.warning("fork server failed, %s starts as a new interpreter: %s", child.name, exc)
            return False
        child.popen = ForkedWorker(process)
        return True


def main_is_import_safe() -> bool:
    """Whether a forked process may import this program's main module, as the standard
    library's fork server makes each of them do: a module run with ``-m`` (its ``__main__``
    is skipped) or an installed console script (its call sits under ``__name__`` guard).
    A plain script might start the fleet again in every worker: its workers are launched."""
    main = sys.modules.get("__main__")
    if getattr(main, "__spec__", None) is not None:
        return True
    path = getattr(main, "__file__", None)
    if path is None:
        return True
    scripts = Path(sysconfig.get_path("scripts")).resolve()
    return Path(path).resolve().parent == scripts


def _stamp() -> str:
    return time.strftime("%FT%T%z")


def forkable_argv(argv: list[str]) -> bool:
    """Whether ``argv`` is ``python -m`` a module a forked worker knows how to run."""
    return len(argv) > 2 and argv[1] == "-m" and argv[2] in ENTRY_MODULES


def forkable(child: Child) -> bool:
    """Whether ``child`` is a solo CPU worker (the workers the pool grows by)."""
    return child.role == "worker" and child.pool == "solo"
