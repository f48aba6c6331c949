"""The RQ job function (imported by ``rq worker`` as ``bench.systems.rq_jobs.noop``)."""

from __future__ import annotations

from typing import Any


def noop(payload: Any = None) -> dict[str, Any]:
    """Do nothing; RQ stores the return value in Redis."""
    return {"ok": True}
