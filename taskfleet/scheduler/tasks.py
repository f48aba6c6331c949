"""The beat task ``scheduler.autoscale_tick``, run on the I/O pool."""

from __future__ import annotations

from typing import Any

from taskfleet.config.app_settings import settings_of
from taskfleet.config.autoscale import load_autoscale_settings
from taskfleet.scheduler.schedule import TICK_TASK
from taskfleet.scheduler.tick import run_tick
from taskfleet.tasks.base import job
from taskfleet.tasks.job_app import app
from taskfleet.workers.resources import open_resources


# send_events=False: an internal job sends no task events, so Flower's Tasks page shows
# jobs, not a tick every few seconds.
@job(app, TICK_TASK, "io", ignore_result=True, send_events=False)
def autoscale_tick(payload: Any = None) -> dict[str, Any]:
    """Measure the fleet, decide per pool, resize workers, log the decision.

    Idempotent under redelivery: a repeated tick within an interval is refused by the gate.
    """
    settings = load_autoscale_settings()
    client = open_resources(settings_of(app)).redis
    return run_tick(app, settings, client)
