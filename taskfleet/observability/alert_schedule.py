"""The beat entry that runs the alert evaluation (no app import: ``app_config`` uses it)."""

from __future__ import annotations

from typing import Any, Final

from taskfleet.config.alerts import AlertSettings, load_alert_settings
from taskfleet.routing.priority import MAX_PRIORITY

ALERT_TASK: Final = "observability.alert_tick"
SCHEDULE_NAME: Final = "taskfleet-alerts"
#: The evaluation jumps ahead of queued I/O jobs: a backlog must not delay its own alert.
ALERT_PRIORITY: Final = MAX_PRIORITY


def alert_schedule(settings: AlertSettings | None = None) -> dict[str, Any]:
    """``beat_schedule`` entries: one evaluation every interval, or none when disabled.

    An evaluation not started within one interval expires (the next one reads afresh).

    Raises:
        ConfigError: the alert settings are invalid (names the variable).
    """
    chosen = settings or load_alert_settings()
    if not chosen.enabled:
        return {}
    return {
        SCHEDULE_NAME: {
            "task": ALERT_TASK,
            "schedule": chosen.interval_s,
            "options": {"expires": chosen.interval_s, "priority": ALERT_PRIORITY},
        }
    }
