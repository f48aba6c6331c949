"""The beat task ``routing.group_sweep``: worker groups' sweep on RabbitMQ, on the I/O pool.

Scheduled only with worker groups declared on a RabbitMQ broker (:func:`group_sweep_schedule`;
on Redis the heartbeat sidecars sweep). See :mod:`taskfleet.routing.amqp_sweep`.
"""

from __future__ import annotations

import time
from typing import Any

from taskfleet.config.app_settings import settings_of
from taskfleet.config.groups import get_group_settings
from taskfleet.config.resilience import get_resilience_settings
from taskfleet.routing.amqp_sweep import sweep_amqp
from taskfleet.routing.sweep_schedule import GROUP_SWEEP_TASK
from taskfleet.routing.topology import Topology
from taskfleet.tasks.base import job
from taskfleet.tasks.job_app import app
from taskfleet.workers.resources import open_resources


@job(app, GROUP_SWEEP_TASK, "io", ignore_result=True, send_events=False)
def group_sweep(payload: Any = None) -> dict[str, Any]:
    """Move the jobs of groups left without a consumer (idempotent: a repeated pass finds
    nothing more to move, or moves what is still there)."""
    from kombu import Connection

    from taskfleet.routing.amqp_groups import AmqpGroupReader

    settings = settings_of(app)
    groups = get_group_settings()
    url = settings.broker_url
    if not groups.enabled or not settings.broker_is_amqp or url is None:
        return {"moved": 0, "skipped": "no worker groups on a RabbitMQ broker"}
    topology = Topology.from_settings(settings, tuple(groups.worker_groups))
    pools = {topology.queue_for_pool(p): topology.group_queues(p) for p in ("cpu", "io")}
    reader = AmqpGroupReader(url)
    mover = Connection(url, transport_options={"confirm_publish": True})
    try:
        moved = sweep_amqp(
            reader,
            mover,
            open_resources(settings).redis,
            pools,
            now=time.time(),
            ttl=get_resilience_settings().heartbeat_ttl,
        )
    finally:
        reader.close()
        mover.release()
    return {"moved": moved}
