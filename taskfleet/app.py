"""The worker's entry point: ``celery -A taskfleet.app worker|beat|flower``.

Importing this module builds the worker's app in three visible steps: the app the jobs are
declared on (:mod:`taskfleet.tasks.job_app`, configured lazily by
:mod:`taskfleet.app_config`), every job module (:func:`install_jobs`), and every worker
signal handler and bootstep (:func:`~taskfleet.workers.hooks.install_worker_hooks`). No
other module installs anything when imported. A producer needs none of this:
``taskfleet.client`` uses :func:`taskfleet.app_config.producer_app`.
"""

from __future__ import annotations

from taskfleet.app_config import RESULT_BACKEND_PATH as RESULT_BACKEND_PATH  # re-exported
from taskfleet.app_config import celery_config as celery_config  # re-exported
from taskfleet.app_config import create_app as create_app  # re-exported
from taskfleet.app_config import make_router as make_router  # re-exported
from taskfleet.config.app_settings import settings_of as settings_of  # re-exported
from taskfleet.tasks.job_app import app, install_jobs
from taskfleet.workers.hooks import install_worker_hooks

__all__ = [
    "RESULT_BACKEND_PATH",
    "app",
    "celery_config",
    "create_app",
    "make_router",
    "settings_of",
]

install_jobs()
install_worker_hooks(app)
