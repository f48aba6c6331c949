"""Task time limits for workers that run jobs inline (``TASKFLEET_CPU_POOL=solo``).

Celery enforces time limits in its prefork pool only: the parent kills a pool process that
runs past the hard limit. A solo worker runs each job on its main thread, where nothing
watches the clock, and a job running past the Redis visibility timeout is delivered again.
Here one interval timer (``SIGALRM``) per job does the watching: at the soft limit it raises
``SoftTimeLimitExceeded`` inside the job (as prefork does, so the job can clean up), at the
hard limit ``TimeLimitExceeded``, which fails the job as prefork's kill does.

Unlike a kill, an exception needs the interpreter: a job stuck in C code that never returns
to Python overruns its hard limit. Work that may do so belongs on prefork workers.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery import signals

log = logging.getLogger(__name__)


class InlineTimeLimits:
    """Arms a job's limits when it starts and disarms them when it ends (main thread only)."""

    def __init__(self, default_soft: float | None, default_hard: float | None) -> None:
        self.default_soft = default_soft
        self.default_hard = default_hard
        self._hard: float | None = None
        self._after_soft: float | None = None
        self._phase: str | None = None

    def take_alarm(self) -> Any:
        """Handle ``SIGALRM`` from now on; returns the handler it replaces."""
        return signal.signal(signal.SIGALRM, self._expired)

    def install(self) -> None:
        """Take ``SIGALRM`` and follow every job of this process."""
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

    def disarm(self, **_: Any) -> None:
        """``task_postrun``: the job ended; stop the clock."""
        if self._phase is not None:
            self._phase = None
            signal.setitimer(signal.ITIMER_REAL, 0)

    def _expired(self, _signum: int, _frame: Any) -> None:
        phase, self._phase = self._phase, None
        if phase == "soft":
            if self._after_soft:
                self._phase = "hard"
                signal.setitimer(signal.ITIMER_REAL, self._after_soft)
            raise SoftTimeLimitExceeded()
        if phase == "hard":
            raise TimeLimitExceeded(self._hard)


def enforce_in_solo_worker(sender: Any = None, **_: Any) -> None:
    """``worker_init``: in a solo worker, enforce the app's time limits on every job."""
    pool_cls = getattr(sender, "pool_cls", None)
    if "solo" not in f"{getattr(pool_cls, '__module__', '')} {pool_cls}".lower():
        return
    conf = sender.app.conf
    InlineTimeLimits(conf.task_soft_time_limit, conf.task_time_limit).install()
    log.info("taskfleet: solo worker enforces time limits with SIGALRM")


signals.worker_init.connect(enforce_in_solo_worker, weak=False)
