"""The beat entry of worker groups' sweep on RabbitMQ (no app import: ``app_config`` uses it)."""

from __future__ import annotations

from typing import Any

from taskfleet.config.beat import periodic_entry
from taskfleet.config.groups import GroupSettings, get_group_settings
from taskfleet.config.resilience import ResilienceSettings, get_resilience_settings
from taskfleet.config.settings import Settings

GROUP_SWEEP_TASK = "routing.group_sweep"
SCHEDULE_NAME = "taskfleet-group-sweep"


def group_sweep_schedule(
    settings: Settings,
    groups: GroupSettings | None = None,
    resilience: ResilienceSettings | None = None,
) -> dict[str, Any]:
    """The sweep's entry, every ``TASKFLEET_RESILIENCE_RECLAIM_INTERVAL``: only with worker
    groups declared on a RabbitMQ broker (on Redis the heartbeat sidecars sweep)."""
    groups = groups or get_group_settings()
    if not groups.enabled or not settings.broker_is_amqp:
        return {}
    interval = (resilience or get_resilience_settings()).reclaim_interval
    return periodic_entry(SCHEDULE_NAME, GROUP_SWEEP_TASK, interval)
