"""Whether solo CPU workers beyond the core count would add anything: their measured CPU use.

A solo worker is one process running one job at a time. Once the pool has a process per
core and those processes want their cores all the time, another worker adds no throughput
to jobs that compute: it only splits the same cores more ways, and first spends a fraction
of a second of CPU booting, taken from the jobs it was started for. Jobs that wait (on the
network, a disk, a lock) leave their process asleep, and there more processes do help.

:class:`CpuGate` tells the two apart by measurement, not by a job's declared kind: the share
of wall time each member's main thread was *runnable* (on a CPU, or ready and waiting for
one: ``/proc/<pid>/schedstat``'s first two fields), so that workers slowed by contention
still count as computing (a kernel without those counters: no gate). The slot
scaler samples its members every round; beyond the core count it starts a worker (or boots
a standby) only once every member has been watched for :data:`WINDOW_S` and their mean
runnable share over that window is under :data:`CPU_BOUND_SHARE`. A grow the gate holds
back is not forgotten: the scaler asks again every round, and it goes ahead as soon as the
workers stop computing (the backlog drained, or the jobs turned to waiting).

Hand-written: the measurement is a difference of two readings per process; no library
decides "CPU-bound" from them.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable

#: Seconds of history a member needs before the gate judges it (and the window it measures).
WINDOW_S = 0.5
#: Mean share of wall time the members are runnable at or above which they count as
#: computing (a worker also sleeps on each job's Redis round trips).
CPU_BOUND_SHARE = 0.75
#: Nanoseconds per second (``schedstat`` counts nanoseconds).
NS_PER_S = 1e9
SELF_SCHEDSTAT = "/proc/self/schedstat"


def runnable_seconds(pid: int) -> float | None:
    """Seconds ``pid``'s main thread has been runnable (on a CPU or waiting for one); None
    once it is gone."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as stat:
            on_cpu, waiting = stat.read().split()[:2]
    except (OSError, ValueError):
        return None
    return (int(on_cpu) + int(waiting)) / NS_PER_S


def can_measure() -> bool:
    """Whether this kernel keeps the counters the gate reads (Linux with schedstat)."""
    return os.path.exists(SELF_SCHEDSTAT)


def usable_cores() -> int:
    """The cores this process may run on (its affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform
        return max(1, os.cpu_count() or 1)


class CpuGate:
    """Says whether growing beyond :attr:`cores` worker processes may help (module doc).

    Args:
        cores: The cores the pool's workers share.
        busy_seconds: A process's runnable seconds by pid (None when gone).
        clock: Monotonic seconds.
        window_s: The measurement window.
        bound_at: The mean runnable share at which the pool counts as computing.
    """

    def __init__(
        self,
        cores: int | None = None,
        busy_seconds: Callable[[int], float | None] = runnable_seconds,
        clock: Callable[[], float] = time.monotonic,
        window_s: float = WINDOW_S,
        bound_at: float = CPU_BOUND_SHARE,
    ) -> None:
        """Nothing is sampled until :meth:`sample`."""
        self.cores = usable_cores() if cores is None else cores
        self.busy_seconds = busy_seconds
        self.clock = clock
        self.window_s = window_s
        self.bound_at = bound_at
        self._history: dict[int, deque[tuple[float, float]]] = {}
        #: The latest mean runnable share measured (None: not yet).
        self.share: float | None = None

    def sample(self, pids: Iterable[int]) -> None:
        """Read the CPU time of ``pids`` (the members now); others are forgotten."""
        now = self.clock()
        keep = set(pids)
        for pid in list(self._history):
            if pid not in keep:
                del self._history[pid]
        for pid in keep:
            used = self.busy_seconds(pid)
            if used is None:
                self._history.pop(pid, None)
                continue
            history = self._history.setdefault(pid, deque())
            history.append((now, used))
            # Keep the newest sample at least a window old, and nothing older.
            while len(history) > 2 and now - history[1][0] >= self.window_s:
                history.popleft()

    def allows_growth(self, size: int, pids: Iterable[int]) -> bool:
        """Whether a pool of ``size`` workers (``pids``) may grow by another process now.

        Below the core count, always. At or beyond it, only when every member has a
        window's history and their mean runnable share is below the bound.
        """
        if size < self.cores:
            return True
        now = self.clock()
        rates = []
        for pid in pids:
            history = self._history.get(pid)
            if not history or now - history[0][0] < self.window_s:
                return False  # not watched long enough: judge next round
            (t0, used0), (t1, used1) = history[0], history[-1]
            rates.append((used1 - used0) / (t1 - t0) if t1 > t0 else 0.0)
        if not rates:
            return True
        self.share = sum(rates) / len(rates)
        return self.share < self.bound_at
