"""Job kinds. Importing this package registers every built-in job with the app."""

from __future__ import annotations

from taskfleet.tasks.base import JOB_POOLS, TaskfleetTask, job

#: Modules that declare jobs; ``taskfleet.app`` imports each (one line per job family).
JOB_MODULES: tuple[str, ...] = (
    "taskfleet.tasks.builtin",
    "taskfleet.tasks.contract_jobs",
    "taskfleet.resilience.testing_jobs",
    "taskfleet.tasks.sandbox_jobs",
    "taskfleet.scheduler.tasks",
)

#: Middleware registered on the app before any job is declared ("module:Class", in order).
MIDDLEWARE_CLASSES: tuple[str, ...] = (
    "taskfleet.cache.reuse:ResultReuseMiddleware",
    "taskfleet.resilience.middleware:DeadLetterMiddleware",
    "taskfleet.resilience.middleware:RetryMiddleware",
    "taskfleet.resilience.middleware:BreakerMiddleware",
)

__all__ = ["JOB_MODULES", "JOB_POOLS", "MIDDLEWARE_CLASSES", "TaskfleetTask", "job"]
