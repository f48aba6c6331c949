"""The app the shipped jobs are declared on: its middleware registered, no worker hooks.

Each job module (:data:`~taskfleet.tasks.table.JOB_MODULES`, and
:data:`~taskfleet.tasks.table.DIAG_JOB_MODULES` when turned on) imports :data:`app` and
declares its jobs on it with ``job``; that needs the middleware first, since a job's options
are sorted by the middleware that owns them. Importing a job module therefore loads this
app and the middleware, and nothing of the worker: ``taskfleet.app``, the worker's entry
point, imports the job modules (:func:`install_jobs`) and installs the worker hooks.
"""

from __future__ import annotations

import importlib

from celery import Celery
from kombu.utils.imports import symbol_by_name

from taskfleet.app_config import create_app
from taskfleet.config.exposure import get_exposure_settings
from taskfleet.tasks.middleware import add_middleware
from taskfleet.tasks.table import DIAG_JOB_MODULES, JOB_MODULES

#: Middleware registered on the app before any job is declared ("module:Class", in order).
MIDDLEWARE_CLASSES: tuple[str, ...] = (
    "taskfleet.cache.reuse:ResultReuseMiddleware",
    "taskfleet.resilience.middleware:DeadLetterMiddleware",
    "taskfleet.resilience.middleware:RetryMiddleware",
    "taskfleet.ratelimit.middleware:RateLimitMiddleware",
    "taskfleet.resilience.middleware:BreakerMiddleware",
)


def install_middleware(celery_app: Celery) -> None:
    """Register the middleware of :data:`MIDDLEWARE_CLASSES` on ``celery_app``, in order.

    Idempotent: a middleware type is registered once per app.
    """
    for path in MIDDLEWARE_CLASSES:
        add_middleware(celery_app, symbol_by_name(path)())


def job_modules(diag_jobs: bool) -> tuple[str, ...]:
    """The job modules a worker imports: the diagnostic ones only when ``diag_jobs``."""
    return JOB_MODULES + (DIAG_JOB_MODULES if diag_jobs else ())


def install_jobs() -> None:
    """Import every job module, each declaring its jobs on :data:`app` (once per process).

    The ``diag.*`` jobs are declared only when ``TASKFLEET_DIAG_JOBS`` is true.
    """
    for module in job_modules(get_exposure_settings().diag_jobs):
        importlib.import_module(module)


#: The app every shipped job is declared on (``taskfleet.app.app`` is this app).
app = create_app()
install_middleware(app)
