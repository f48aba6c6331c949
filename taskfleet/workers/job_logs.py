"""Celery's two log lines per job, off unless ``TASKFLEET_LOG_JOBS`` asks for them.

At INFO a stock Celery worker logs every job twice: "Task ... received"
(``celery.worker.strategy``) and "Task ... succeeded in ...s: <result>" (``celery.app.trace``,
after a ``saferepr`` of the result). ``taskfleet up`` runs its workers at INFO
(``TASKFLEET_LOG_LEVEL``), so those lines were the default, and they cost a solo worker about a
quarter of its throughput (no-op jobs, one solo worker: 2,430 and 2,326 jobs/s at WARNING,
1,796 and 1,825 at INFO). Per-job records belong to the metrics and to Flower; the log keeps
what needs a reader.

:func:`quiet_job_lines` raises those two loggers to WARNING at ``worker_init``, before the
consumer builds its strategies and tracers, which read the level once. What still reaches the
log at INFO: failures (ERROR), rejections and dead letters (WARNING), taskfleet's own retry
lines (``taskfleet.resilience.middleware``), and everything outside the job path. A retry
Celery re-queues was an INFO line of ``celery.app.trace``; with the lines off, the retry
middleware's own line tells it.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from taskfleet.config.app_settings import settings_of

#: Celery's loggers that write one line per job at INFO.
JOB_LOGGERS: Final[tuple[str, ...]] = ("celery.worker.strategy", "celery.app.trace")
#: Their level while per-job lines are off.
QUIET_LEVEL: Final[int] = logging.WARNING


def set_job_lines(enabled: bool) -> None:
    """Let Celery's per-job lines through (``enabled``), or hold them below WARNING."""
    for name in JOB_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if enabled else QUIET_LEVEL)


def quiet_job_lines(sender: Any = None, **_: Any) -> None:
    """``worker_init``: per-job lines as ``TASKFLEET_LOG_JOBS`` says (off by default)."""
    set_job_lines(settings_of(getattr(sender, "app", None)).log_jobs)
