"""A standby solo CPU worker: booted and idle, promoted to the CPU queue in milliseconds.

A new solo worker takes seconds to take its first job (an interpreter, Celery's and
taskfleet's imports, the consumer's start-up); a prefork pool grows by a fork. So that the
autoscaler's grow is not paid in those seconds, ``taskfleet up`` keeps one solo CPU worker
booted ahead of need (:class:`~taskfleet.fleet.scaling.SlotScaler`). It is a stock solo
worker consuming only the topology's standby queue, to which nothing is published, with
:data:`STANDBY_GROUP_ENV` naming its slot group.

:class:`StandbyStep` (a consumer bootstep, idle unless that variable is set) reads the
group's registration every :data:`CHECK_EVERY_S` in the worker's own event loop. The
supervisor promotes a standby by registering its node name among the group's workers; the
step then consumes the CPU pool's queues (Celery's own ``add_task_queue``, as the
``add_consumer`` remote control does) and stops consuming the standby queue. The
registration is the promotion's record: a promoted worker that crashes is started again as
a standby, finds its name registered and takes its queues back.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import redis
from celery import bootsteps

from taskfleet.config.app_settings import settings_of
from taskfleet.routing.topology import Topology
from taskfleet.scheduler.slots import SlotRegistry
from taskfleet.workers.profiles import cpu_profile

log = logging.getLogger(__name__)

#: Set in a standby worker's environment: the id of the slot group it stands by for.
STANDBY_GROUP_ENV = "TASKFLEET_STANDBY_GROUP"
#: Seconds between two reads of the group's registration while in standby.
CHECK_EVERY_S = 0.05
#: Seconds one read may take (it runs in the worker's event loop).
CHECK_TIMEOUT_S = 1.0
#: The app setting holding the state Redis's URL (where slot groups are registered).
REDIS_URL_SETTING = "taskfleet_redis_url"


class StandbyStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Waits for its node's promotion, then consumes the CPU queues (see the module doc)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)
    label = "Standby"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        """Enabled only in a worker started with :data:`STANDBY_GROUP_ENV` set."""
        self.group = os.environ.get(STANDBY_GROUP_ENV) or None
        self.enabled = self.group is not None
        self.promoted = False
        self.slot_registry: SlotRegistry | None = None
        self.check_timer: Any = None
        super().__init__(parent, **kwargs)

    def start(self, c: Any) -> None:
        """Check now, then every :data:`CHECK_EVERY_S` until promoted."""
        if self.promoted:  # the consumer restarted (a lost broker connection): queues kept
            self.consume_cpu_queues(c)
            return
        client = redis.Redis.from_url(
            c.app.conf[REDIS_URL_SETTING],
            socket_timeout=CHECK_TIMEOUT_S,
            socket_connect_timeout=CHECK_TIMEOUT_S,
        )
        self.slot_registry = SlotRegistry(client)
        if not self.check(c):
            self.check_timer = c.timer.call_repeatedly(CHECK_EVERY_S, self.check, (c,))

    def check(self, c: Any) -> bool:
        """Whether this worker is promoted; promotes it when its group registers it."""
        if self.promoted or self.slot_registry is None or self.group is None:
            return self.promoted
        try:
            group = self.slot_registry.group(self.group)
        except redis.RedisError as exc:
            log.debug("standby: group %s unreadable: %s", self.group, exc)
            return False
        if group is None or c.hostname not in group.nodes:
            return False
        self.promoted = True
        self.cancel_checks()
        self.consume_cpu_queues(c)
        log.info("standby %s promoted in slot group %s", c.hostname, self.group)
        return True

    def stop(self, c: Any) -> None:
        """The consumer stops: no more checks."""
        self.cancel_checks()

    def shutdown(self, c: Any) -> None:
        """The worker stops: close the Redis client."""
        self.cancel_checks()
        if self.slot_registry is not None:
            self.slot_registry.close()
            self.slot_registry = None

    def consume_cpu_queues(self, c: Any) -> None:
        """Consume the CPU pool's queues (its group's first), and no longer the standby's."""
        settings = settings_of(c.app)
        for queue in cpu_profile(settings).queues:
            c.add_task_queue(queue)
        standby = Topology.from_settings(settings).standby_queue
        if c.task_consumer is not None and c.task_consumer.consuming_from(standby):
            c.cancel_task_queue(standby)

    def cancel_checks(self) -> None:
        """Stop reading the registration."""
        if self.check_timer is not None:
            self.check_timer.cancel()
            self.check_timer = None
