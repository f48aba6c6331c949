"""The forked side of ``taskfleet up``'s fork server (``taskfleet.fleet.forkserver``).

The fork server imports this module to run each forked worker. It imports nothing of
taskfleet's: a module the fork server imports is imported once, with the fork server's
environment, for every worker forked after; taskfleet's own modules must read each worker's.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

#: ``argv`` of a launched worker starts ``python -m <module>``: a forked one runs the rest.
CELERY_PREFIX = 3
#: The modules a worker's command line may run (``taskfleet.workers.main``, or ``celery``).
LEAN_MODULE = "taskfleet.workers.main"
ENTRY_MODULES = (LEAN_MODULE, "celery")
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:  # pragma: no cover - runs in a child process
    """Ask Linux to SIGTERM this (child) process when its parent dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def run_worker(argv: list[str], env: dict[str, str], log_path: str) -> None:  # pragma: no cover
    """In the forked process: a session, the log, the environment, then the worker's command
    line (``taskfleet.workers.main``'s, or Celery's ``celery``)."""
    os.setsid()
    if sys.platform.startswith("linux"):
        die_with_parent()
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = ["celery", *argv[CELERY_PREFIX:]]
    if argv[CELERY_PREFIX - 1] == LEAN_MODULE:
        from taskfleet.workers.main import main as lean_main

        lean_main(argv[CELERY_PREFIX:])
        return
    from celery.__main__ import main

    main()
