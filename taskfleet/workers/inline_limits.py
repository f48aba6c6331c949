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
overrun. The kernel is the backstop there: each job also has the process's soft
``RLIMIT_CPU`` at the CPU it has used plus the hard limit plus ``BACKSTOP_GRACE_S`` (up to
``CPU_LIMIT_SLACK_S`` more), and a job that spins that long without yielding to Python is
stopped by ``SIGXCPU`` with the worker. The limit is set again only when the job's need has
moved out of that window, and lifted once the worker has started no job for
``IDLE_LIFT_S`` (:class:`LiftBackstopWhenIdle`, a timer of the worker's event loop), so that
the worker's own CPU between jobs never counts against it. Setting it for every job cost 8-32
us a job in W1 here (``setrlimit``), a tenth of a no-op job's whole time in the worker. A
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
import time
from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery import bootsteps, signals

from taskfleet.workers.pools import pool_kind

log = logging.getLogger(__name__)

#: CPU seconds past a job's hard limit before the kernel stops a job that ignores its alarms.
BACKSTOP_GRACE_S = 5.0
#: CPU seconds the backstop may come later than that, so it is not set again for every job.
CPU_LIMIT_SLACK_S = 2.0
#: Seconds without a job start after which the event loop lifts the backstop.
IDLE_LIFT_S = 1.0

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
        #: The process's own ``RLIMIT_CPU`` (soft, hard), put back when no job needs less.
        self._cpu_limits = resource.getrlimit(resource.RLIMIT_CPU)
        #: The soft CPU limit in place for jobs (None: the process's own).
        self._cpu_soft: int | None = None
        #: False once an event loop lifts the limit when idle (:class:`LiftBackstopWhenIdle`).
        self.lift_after_each_job = True
        self._started_since_check = False
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
        self._started_since_check = True
        if soft and (not hard or soft < hard):
            self._phase = "soft"
            self._after_soft = hard - soft if hard else None
            signal.setitimer(signal.ITIMER_REAL, soft)
        elif hard:
            self._phase = "hard"
            signal.setitimer(signal.ITIMER_REAL, hard)
        if hard:
            self._limit_cpu(hard + self.backstop_grace)
        else:  # no hard limit: no backstop either (one may be left from an earlier job)
            self.lift_backstop()

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
            if self.lift_after_each_job:
                self.lift_backstop()

    def lift_backstop(self) -> None:
        """Put the process's own CPU limit back."""
        if self._cpu_soft is not None:
            self._cpu_soft = None
            resource.setrlimit(resource.RLIMIT_CPU, self._cpu_limits)

    def lift_if_idle(self) -> None:
        """Event-loop timer: lift the backstop if no job started since the last call."""
        if self._hard is None and not self._started_since_check:
            self.lift_backstop()
        self._started_since_check = False

    def _limit_cpu(self, seconds: float) -> None:
        # The process's CPU time, all threads: what RLIMIT_CPU counts.
        need = time.process_time() + seconds
        current = self._cpu_soft
        if current is not None and need <= current <= need + CPU_LIMIT_SLACK_S:
            return  # the limit in place stops this job within the slack of its due time
        soft = math.ceil(need + CPU_LIMIT_SLACK_S / 2)
        own_soft, hard = self._cpu_limits
        for limit in (own_soft, hard):
            if limit != resource.RLIM_INFINITY:
                soft = min(soft, limit)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
        self._cpu_soft = soft

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


class LiftBackstopWhenIdle(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker bootstep: a solo worker's CPU backstop stays set while jobs keep coming and is
    lifted by the event loop once none has started for ``IDLE_LIFT_S``."""

    requires = ("celery.worker.components:Hub",)

    def include_if(self, w: Any) -> bool:
        """Only a worker whose limits are enforced here and that has an event loop."""
        return _installed is not None and bool(getattr(w, "use_eventloop", False))

    def start(self, w: Any) -> None:
        """Lift from the loop from now on, not after each job."""
        limits = _installed
        if limits is None:
            return
        limits.lift_after_each_job = False
        w.hub.call_repeatedly(IDLE_LIFT_S, limits.lift_if_idle)
