"""One spare reserved job per worker, not per process.

With ``acks_late`` and prefetch 1 per process, a pool process that finishes a job waits for
its parent to fetch the next one (a BRPOP round trip and the delivery's bookkeeping) before
it can start: on short jobs that idle time bounds throughput. A prefetch multiplier of 2
would hide it but reserves one extra job *per process*, which a long-job fleet feels (jobs
wait behind busy processes while another host idles). taskfleet reserves one spare job *per
worker* instead: the next job is already in the parent when any process frees up, and at
most one job per worker waits for a process. Celery has no setting for this (its prefetch is
processes x multiplier), hence a consumer bootstep that adds the spare after the task
consumer starts; Celery's own pool grow/shrink adjust the count by deltas, so it persists.
``taskfleet.workers.hooks.install_worker_hooks`` adds the step to the worker's app.

A worker that runs jobs inline (solo) gets no spare: it cannot start the spare before its
running job ends, while another worker could.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

from taskfleet.config.app_settings import settings_of
from taskfleet.workers.pools import pool_kind

log = logging.getLogger(__name__)


class SparePrefetchStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Raise the consumer's prefetch count by the configured spare, on every (re)start."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        """Add the spare to the QoS the Tasks step just created (prefetch 0 = unlimited)."""
        if pool_kind(c.pool) == "solo":
            return
        spare = settings_of(c.app).spare_prefetch
        if spare and c.qos is not None and c.initial_prefetch_count:
            c.qos.increment_eventually(spare)
            c.qos.update()
            log.debug("prefetch raised by %d spare to %s", spare, c.qos.value)
