"""Job kinds. Importing this package registers every built-in job with the app."""

from __future__ import annotations

from taskfleet.tasks.base import JOB_POOLS, TaskfleetTask, job

JOB_MODULES = ("taskfleet.tasks.builtin",)

__all__ = ["JOB_MODULES", "JOB_POOLS", "TaskfleetTask", "job"]
