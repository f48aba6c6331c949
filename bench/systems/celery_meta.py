"""Reading Celery's Redis result format (``celery-task-meta-<id>``), shared by two systems."""

from __future__ import annotations

from typing import Any

from bench.systems.base import RedisKeySystem

META_PREFIX = "celery-task-meta-"


class CeleryMetaSystem(RedisKeySystem):
    """Done means the job's meta key exists.

    Neither the stock app nor taskfleet sets ``task_track_started``, so the only state a
    no-op job ever writes is SUCCESS; EXISTS is enough and far cheaper than GET + decode.
    """

    #: Both write the meta with SET (taskfleet from its store script).
    done_event = ("$", "set")

    def result_key(self, key: Any) -> str:
        """The job's meta key."""
        return META_PREFIX + str(key)
