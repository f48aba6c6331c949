"""Alert evaluation settings, read from ``TASKFLEET_ALERT_*`` and validated at start, and the
beat entry that runs the evaluation (no app import: ``app_config`` uses it).

Off by default: when ``TASKFLEET_ALERT_ENABLED`` is true, beat schedules one evaluation every
``TASKFLEET_ALERT_INTERVAL_S`` (run by one I/O worker fleet-wide). The rules are the shipped
ones (:data:`taskfleet.observability.alert_rules.DEFAULT_RULES`) unless
``TASKFLEET_ALERT_RULES_FILE`` names a JSON list of rules. Firing and resolve messages go to
the log, and to ``TASKFLEET_ALERT_WEBHOOK_URL`` when set (through the outbound client, so a
private address needs ``TASKFLEET_OUTBOUND_ALLOW``). The error rate reads the job counters
in the worker metric files of ``TASKFLEET_ALERT_METRICS_DIR`` (default
``PROMETHEUS_MULTIPROC_DIR``, and their sub-folders); with neither, that rule is skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from taskfleet.config.beat import periodic_entry
from taskfleet.config.settings import load_validated

ALERT_ENV_PREFIX = "TASKFLEET_ALERT_"
DEFAULT_ALERT_ENABLED = False
DEFAULT_ALERT_INTERVAL_S = 15.0
DEFAULT_WEBHOOK_TIMEOUT_S = 5.0
#: Firing alerts are remembered this long without an evaluation (then forgotten, unresolved).
DEFAULT_STATE_TTL_S = 86_400.0


class AlertSettings(BaseSettings):
    """Whether alerts are evaluated, how often, with which rules, and where they are sent."""

    model_config = SettingsConfigDict(
        env_prefix=ALERT_ENV_PREFIX, env_file=".env", extra="ignore", validate_default=True
    )

    enabled: bool = Field(DEFAULT_ALERT_ENABLED, description="Schedule the evaluation in beat")
    interval_s: float = Field(DEFAULT_ALERT_INTERVAL_S, gt=0, le=3600)
    rules_file: Path | None = Field(None, description="JSON list of rules replacing the shipped")
    webhook_url: str | None = Field(None, description="POSTed one JSON message per change")
    webhook_timeout_s: float = Field(DEFAULT_WEBHOOK_TIMEOUT_S, gt=0, le=60)
    state_ttl_s: float = Field(DEFAULT_STATE_TTL_S, gt=0)
    metrics_dir: Path | None = Field(
        None,
        description="Worker metric files for the error rate (default PROMETHEUS_MULTIPROC_DIR)",
    )


def load_alert_settings(**overrides: object) -> AlertSettings:
    """Read and validate the settings, as one ConfigError naming each bad variable."""
    return load_validated(AlertSettings, "alert settings", **overrides)


ALERT_TASK: Final = "observability.alert_tick"
SCHEDULE_NAME: Final = "taskfleet-alerts"


def alert_schedule(settings: AlertSettings | None = None) -> dict[str, Any]:
    """``beat_schedule`` entries: one evaluation every interval, or none when disabled.

    An evaluation not started within one interval expires (the next one reads afresh).

    Raises:
        ConfigError: the alert settings are invalid (names the variable).
    """
    chosen = settings or load_alert_settings()
    if not chosen.enabled:
        return {}
    return periodic_entry(SCHEDULE_NAME, ALERT_TASK, chosen.interval_s)
