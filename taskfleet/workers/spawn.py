"""Start a worker's helper processes (persister, heartbeat sidecar) with no Python code run
in the child between fork and exec.

gevent's ``subprocess.Popen`` forks from Python, so the child runs every
``os.register_at_fork`` hook before it reaches ``exec``. A hook that yields (OpenTelemetry's
span processor starts a thread in the child, and under gevent a thread start waits on the
hub) lets the child's copy of the hub run the parent's other greenlets. Seen in the tracing
test, 5 times in 90 runs with both cores loaded: Celery's remote-control greenlet,
mid-handshake, sent a ``PING`` from the persister's child on the socket it shares with the
parent, and the parent's connection read the wrong replies from then on; the worker never
answered a ping.

The standard library's ``Popen`` starts the child from C (``posix_spawn``, or
``_posixsubprocess``), running no Python there. gevent's patch turns both off in the
``subprocess`` module itself, so under gevent this module loads a private copy of the
standard library's ``subprocess``: its ``Popen`` spawns with ``os.posix_spawn``, which gevent
wraps to watch the child, so ``wait`` and ``poll`` stay cooperative and report the real
exit status. ``close_fds`` is off on that path (it rules ``posix_spawn`` out); descriptors
Python opens are not inheritable anyway (PEP 446), so the child gets only its standard
streams. gevent defers closing a pipe (its ``os.close``) to the hub's next turn, so the
parent's copies of the child's pipe ends close only once the caller yields:
:func:`start_process` yields until the hub is idle before it returns, and a blocking read
of the child's output then sees its end. The copy raises the ``subprocess`` module's own
exception types.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Mapping, Sequence
from functools import cache
from types import ModuleType
from typing import Any

#: What the private copy raises, taken from the ``subprocess`` module callers catch from.
SHARED_NAMES = ("SubprocessError", "TimeoutExpired", "CalledProcessError", "PIPE", "DEVNULL")


def gevent_patched() -> bool:
    """Whether gevent has patched ``subprocess`` in this process (never imports gevent)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("subprocess"))


@cache
def _unpatched_subprocess() -> ModuleType:
    """A private copy of the standard library's ``subprocess``, loaded after gevent's patch
    (its ``os`` is gevent's, so ``posix_spawn`` and ``waitpid`` are the watched ones)."""
    spec = importlib.util.find_spec("subprocess")
    if spec is None or spec.loader is None:  # a standard library module: always found
        raise ImportError("the standard library's subprocess module is missing")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in SHARED_NAMES:
        setattr(module, name, getattr(subprocess, name))
    return module


def start_process(
    argv: Sequence[str], *, env: Mapping[str, str], **options: Any
) -> subprocess.Popen[bytes]:
    """``Popen(argv, env=env, **options)`` with the child started from C (module doc).

    Args:
        argv: The program and its arguments; the program as an absolute path (as
            ``sys.executable`` is), which ``posix_spawn`` needs.
        env: The child's whole environment.
        options: Further ``Popen`` arguments (``stdin``, ``stdout``, ...); not
            ``preexec_fn``, which would run Python in the child again.
    """
    if "preexec_fn" in options:
        raise ValueError("start_process runs no Python in the child: no preexec_fn")
    if not gevent_patched():
        return subprocess.Popen(list(argv), env=dict(env), **options)
    popen: type[subprocess.Popen[bytes]] = _unpatched_subprocess().Popen
    proc = popen(list(argv), env=dict(env), **{**options, "close_fds": False})
    sys.modules["gevent"].idle()  # the deferred closes of the child's pipe ends (module doc)
    return proc
