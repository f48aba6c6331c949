"""Unique memory (USS) of every process of a worker tree, each named by its role.

USS is the memory only that process holds: what the kernel would free if it exited. It is
the figure that grows when a process leaks, and (unlike RSS) it does not count the pages a
prefork child still shares with its parent.

Roles come from each process's command line and its parent's role, so the same code names
``taskfleet up``'s tree (supervisor, CPU and I/O workers, their pool processes, sidecars and
persisters, beat, the metrics endpoint) and a stock ``celery worker``'s (main process and
pool processes).

A CPU pool comes in two shapes. Prefork: one ``cpu worker`` main process and its ``cpu pool``
processes (forked, so they carry the parent's command line). Solo (``taskfleet up``'s default):
several ``cpu worker (solo)`` processes, each ``celery worker -P solo``, each a worker of its
own that the supervisor starts and retires as the autoscaler asks.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import psutil

SUPERVISOR = "supervisor"
#: ``taskfleet metrics serve``, which ``taskfleet up`` runs by default.
METRICS = "metrics endpoint"
POOL_SUFFIX = " pool"
MAIN_SUFFIX = " worker"
#: A worker that runs its jobs in its own process (``-P solo``): no pool processes.
SOLO_SUFFIX = " worker (solo)"
SOLO_POOL = "solo"
SIDECAR_MODULE = "taskfleet.sidecar"
#: ``taskfleet up``'s fork server (``taskfleet/fleet/forkserver.py``), and the solo CPU
#: workers it forks: they carry its command line, so they are told apart by their parent.
FORK_SERVER = "fork server"
FORK_SERVER_MARK = "multiprocessing.forkserver"
FORKED_WORKER = "cpu" + SOLO_SUFFIX
#: The standard library's helper process the fork server starts beside it.
RESOURCE_TRACKER = "resource tracker"
RESOURCE_TRACKER_MARK = "multiprocessing.resource_tracker"
PERSISTER_MODULE = "taskfleet.results.persister"


@dataclass(frozen=True)
class ProcessMemory:
    """One process at one instant."""

    pid: int
    role: str
    uss: int
    rss: int

    @property
    def is_pool(self) -> bool:
        """Whether it is a prefork pool process (several per worker, forked by it)."""
        return self.role.endswith(POOL_SUFFIX)

    @property
    def is_solo(self) -> bool:
        """Whether it is a solo worker (one process; the pool grows by more of them)."""
        return self.role.endswith(SOLO_SUFFIX)


def _queue_name(cmdline: Sequence[str]) -> str:
    """The first queue a ``celery worker`` command consumes (``-Q cpu`` gives ``cpu``)."""
    for flag, value in itertools.pairwise(cmdline):
        if flag in ("-Q", "--queues"):
            return value.split(",")[0]
    return "celery"


def _pool_of(cmdline: Sequence[str]) -> str | None:
    """The ``-P``/``--pool`` of a ``celery worker`` command (``None``: Celery's default)."""
    for flag, value in itertools.pairwise(cmdline):
        if flag in ("-P", "--pool"):
            return value
    for arg in cmdline:
        if arg.startswith("--pool="):
            return arg.removeprefix("--pool=")
    return None


def role_of(cmdline: Sequence[str], parent_role: str | None) -> str:
    """Name a process by its command line and its parent's role.

    Args:
        cmdline: Its argv.
        parent_role: The parent's role, ``None`` for the tree's root.

    Returns:
        ``supervisor``, ``<queue> worker``, ``<queue> pool``, ``<queue> worker (solo)``,
        ``<parent> sidecar``, ``<parent> persister``, ``beat``, ``metrics endpoint``,
        ``fork server`` (its children: ``cpu worker (solo)``), ``resource tracker``, or the
        program name.
    """
    if any(RESOURCE_TRACKER_MARK in arg for arg in cmdline):
        return RESOURCE_TRACKER
    if any(FORK_SERVER_MARK in arg for arg in cmdline):
        return FORKED_WORKER if parent_role == FORK_SERVER else FORK_SERVER
    if SIDECAR_MODULE in cmdline:
        return f"{parent_role} sidecar"
    if PERSISTER_MODULE in cmdline:
        return f"{parent_role} persister"
    if "beat" in cmdline:
        return "beat"
    if "worker" in cmdline:
        if _pool_of(cmdline) == SOLO_POOL:
            return _queue_name(cmdline) + SOLO_SUFFIX
        if parent_role is not None and parent_role.endswith(MAIN_SUFFIX):
            return parent_role.removesuffix(MAIN_SUFFIX) + POOL_SUFFIX
        return _queue_name(cmdline) + MAIN_SUFFIX
    if parent_role is None and "up" in cmdline:
        return SUPERVISOR
    if "metrics" in cmdline and "serve" in cmdline:
        return METRICS
    return cmdline[0].rsplit("/", 1)[-1] if cmdline else "?"


def sample_tree(root_pid: int) -> list[ProcessMemory]:
    """USS and RSS of ``root_pid`` and every live descendant, by role.

    A process that exits while it is read is left out.

    Args:
        root_pid: The tree's root (``taskfleet up``, or a ``celery worker``).

    Returns:
        One entry per live process, parents before children.
    """
    out: list[ProcessMemory] = []
    stack: list[tuple[psutil.Process, str | None]] = []
    with contextlib.suppress(psutil.Error):
        stack.append((psutil.Process(root_pid), None))
    while stack:
        proc, parent_role = stack.pop(0)
        try:
            role = role_of(proc.cmdline(), parent_role)
            info = proc.memory_full_info()
            children = proc.children()
        except psutil.Error:
            continue
        out.append(ProcessMemory(proc.pid, role, int(info.uss), int(info.rss)))
        stack.extend((child, role) for child in children)
    return out
