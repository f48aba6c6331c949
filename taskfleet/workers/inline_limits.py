"""Task time limits for workers that run jobs inline (``TASKFLEET_CPU_POOL=solo``).

Celery enforces time limits in its prefork pool only: the parent kills a pool process that
runs past the hard limit. A solo worker runs each job on its main thread, where nothing
watches the clock, and a job running past the Redis visibility timeout is delivered again.
Here one interval timer (``SIGALRM``) per job does the watching: at the soft limit it raises
``SoftTimeLimitExceeded`` inside the job (as prefork does, so the job can clean up), at the
hard limit ``TimeLimitExceeded``, which fails the job as prefork's kill does.

The alarm is stopped as soon as the job's own code returns (``TaskfleetTask.__call__`` calls
:func:`job_code_returned`), so it never lands in the result write or the ack that follow;
for other tasks it runs until ``task_postrun``.

An exception needs the interpreter, though: a job stuck in C code that never returns to
Python (measured: ``sum(range(3 * 10**8))`` let a 0.5 s alarm through only after 4.9 s) would
overrun. The kernel is the backstop there: each job also lowers the process's soft
``RLIMIT_CPU`` to the CPU it has used plus the hard limit plus ``BACKSTOP_GRACE_S``, and a job
that spins that long without yielding to Python is stopped by ``SIGXCPU`` with the worker. A
process manager starts a new worker (``taskfleet up`` reports the death and stops, as for any
dead worker); the job is delivered again, and past ``max_deliveries`` it is dead-lettered as
a poison pill. A job blocked in C without using the CPU is not covered:
work that may do so belongs on prefork workers.
"""

from __future__ import annotations

import logging
import math
import resource
import signal
from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery import signals

from taskfleet.workers.pools import pool_kind

log = logging.getLogger(__name__)

#: CPU seconds past a job's hard limit before the kernel stops a job that ignores its alarms.
BACKSTOP_GRACE_S = 5.0

#: The limits this process enforces (a solo worker's), if any.
_installed: InlineTimeLimits | None = None


class InlineTimeLimits:
    """Arms a job's limits when it starts and disarms them when it ends (main thread only)."""

    def __init__(
        self,
        default_soft: float | None,
        default_hard: float | None,
        backstop_grace: float = BACKSTOP_GRACE_S,
    ) -> None:
        self.default_soft = default_soft
        self.default_hard = default_hard
        self.backstop_grace = backstop_grace
        #: The process's own ``RLIMIT_CPU`` (soft, hard), put back after each job.
        self._cpu_limits = resource.getrlimit(resource.RLIMIT_CPU)
        self._hard: float | None = None
        self._after_soft: float | None = None
        self._phase: str | None = None

    def take_alarm(self) -> Any:
        """Handle ``SIGALRM`` from now on; returns the handler it replaces."""
        return signal.signal(signal.SIGALRM, self._expired)

    def install(self) -> None:
        """Take ``SIGALRM`` and follow every job of this process."""
        global _installed
        _installed = self
        self.take_alarm()
        signals.task_prerun.connect(self.arm, weak=False)
        signals.task_postrun.connect(self.disarm, weak=False)

    def limits_of(self, task: Any) -> tuple[float | None, float | None]:
        """``(soft, hard)`` for a job: its message's, else its task's, else the app's."""
        hard, soft = getattr(task.request, "timelimit", None) or (None, None)
        soft = soft or getattr(task, "soft_time_limit", None) or self.default_soft
        hard = hard or getattr(task, "time_limit", None) or self.default_hard
        return soft, hard

    def arm(self, task: Any = None, **_: Any) -> None:
        """``task_prerun``: start the clock on the first limit the job has."""
        soft, hard = self.limits_of(task)
        self._hard, self._after_soft = hard, None
        if soft and (not hard or soft < hard):
            self._phase = "soft"
            self._after_soft = hard - soft if hard else None
            signal.setitimer(signal.ITIMER_REAL, soft)
        elif hard:
            self._phase = "hard"
            signal.setitimer(signal.ITIMER_REAL, hard)
        if hard:
            self._limit_cpu(hard + self.backstop_grace)

    def stop_alarm(self) -> None:
        """Stop the clock (the job's code has returned); the CPU backstop stays until postrun."""
        if self._phase is not None:
            self._phase = None
            signal.setitimer(signal.ITIMER_REAL, 0)

    def disarm(self, **_: Any) -> None:
        """``task_postrun``: the job ended; stop the clock and lift the CPU backstop."""
        self.stop_alarm()
        if self._hard:
            self._hard = None
            resource.setrlimit(resource.RLIMIT_CPU, self._cpu_limits)

    def _limit_cpu(self, seconds: float) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        soft = math.ceil(usage.ru_utime + usage.ru_stime + seconds)
        own_soft, hard = self._cpu_limits
        for limit in (own_soft, hard):
            if limit != resource.RLIM_INFINITY:
                soft = min(soft, limit)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))

    def _expired(self, _signum: int, _frame: Any) -> None:
        phase, self._phase = self._phase, None
        if phase == "soft":
            if self._after_soft:
                self._phase = "hard"
                signal.setitimer(signal.ITIMER_REAL, self._after_soft)
            raise SoftTimeLimitExceeded()
        if phase == "hard":
            raise TimeLimitExceeded(self._hard)


def job_code_returned() -> None:
    """The running job's own code returned or raised: no alarm may interrupt what follows."""
    if _installed is not None:
        _installed.stop_alarm()


def enforce_in_solo_worker(sender: Any = None, **_: Any) -> None:
    """``worker_init``: in a solo worker, enforce the app's time limits on every job.

    Connected by ``taskfleet.workers.hooks.install_worker_hooks``; the limits it installs
    follow each job through ``task_prerun`` and ``task_postrun`` (:meth:`InlineTimeLimits.install`).
    """
    if pool_kind(getattr(sender, "pool_cls", None)) != "solo":
        return
    conf = sender.app.conf
    InlineTimeLimits(conf.task_soft_time_limit, conf.task_time_limit).install()
    log.info("taskfleet: solo worker enforces time limits (SIGALRM, RLIMIT_CPU backstop)")
