"""Reading Celery's Redis result format (``celery-task-meta-<id>``), shared by two systems."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.systems.base import RedisKeySystem

META_PREFIX = "celery-task-meta-"


class CeleryMetaSystem(RedisKeySystem):
    """Done means the job's meta key exists.

    Neither the stock app nor taskfleet sets ``task_track_started``, so the only state a
    no-op job ever writes is SUCCESS; EXISTS is enough and far cheaper than GET + decode.
    """

    def done_flags(self, keys: Sequence[Any]) -> list[bool]:
        """Pipelined EXISTS of each job's meta key."""
        return super().done_flags([META_PREFIX + str(job_id) for job_id in keys])
