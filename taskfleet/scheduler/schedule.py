"""The beat schedule entry that runs the autoscaler tick (no app import: ``app.py`` uses it)."""

from __future__ import annotations

from typing import Any

from taskfleet.config.autoscale import AutoscaleSettings, load_autoscale_settings
from taskfleet.config.beat import TICK_PRIORITY, periodic_entry

TICK_TASK = "scheduler.autoscale_tick"
SCHEDULE_NAME = "taskfleet-autoscale"
__all__ = ["SCHEDULE_NAME", "TICK_PRIORITY", "TICK_TASK", "autoscale_schedule"]


def autoscale_schedule(settings: AutoscaleSettings | None = None) -> dict[str, Any]:
    """``beat_schedule`` entries: one tick every interval, or none when disabled.

    A tick not started within one interval expires (the next one measures afresh).

    Raises:
        ConfigError: the autoscaler settings are invalid (names the variable).
    """
    chosen = settings or load_autoscale_settings()
    if not chosen.enabled:
        return {}
    return periodic_entry(SCHEDULE_NAME, TICK_TASK, chosen.interval)
