"""Which worker group a producer's jobs go to: by preference, affinity key or least backlog.

With groups declared (``TASKFLEET_WORKER_GROUPS``), each pool queue has one queue per group
(``cpu@eu``). :class:`GroupRouter` picks one per job:

1. the group asked for (``Client.enqueue(..., group=)``, else the client's default), if it
   is *healthy*;
2. else, given an affinity key, the group a consistent-hash ring (uhashring) over the healthy
   groups maps it to: a key stays on its group while that group stays healthy;
3. else the healthy group with the least backlog.

A group is healthy while a live worker consumes its queue (its heartbeat sidecar records it
in ``taskfleet:consumers:<queue>``, :mod:`taskfleet.routing.owners`, backdated when the
worker exits) and its oldest job has waited at most ``TASKFLEET_GROUP_MAX_AGE``. This is the
failover of new jobs, at enqueue; the jobs already queued in a group left without a live
consumer are moved by the sidecars' sweep (:mod:`taskfleet.group_sweep`). When no group is
healthy, jobs go to the group asked for, else the least backlogged one, and wait.

Readings are cached, as admission control's are (:mod:`taskfleet.ratelimit.admission`, whose
head watch they share): one pipelined round trip per ``TASKFLEET_GROUP_REFRESH_MS`` at most,
never one per enqueue. Until a first reading (or on a broker neither Redis nor RabbitMQ),
every group counts as healthy and as empty.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from taskfleet.config.groups import GroupSettings, group_queue
from taskfleet.config.settings import Settings
from taskfleet.ratelimit.admission import LUA_PATH, WATCH_PREFIX, WATCH_TTL_S
from taskfleet.routing.depth import redis_priority_keys
from taskfleet.routing.group_reading import GroupReader, GroupReading
from taskfleet.routing.owners import consumers_key
from taskfleet.routing.transport import ALL_PRIORITY_STEPS


class GroupRouter:
    """Picks a group queue for each job from cached readings. Thread-safe.

    Args:
        client: The broker's Redis (None: no readings from Redis; every group healthy and
            empty unless ``reader`` reads them).
        queues: The pool queues (``cpu``, ``io``) that have group queues.
        settings: The groups, the default one, the age bound and the refresh interval.
        live_ttl: A consumer whose last heartbeat is older than this (s) is not live.
        reader: Readings from another broker (RabbitMQ:
            :class:`~taskfleet.routing.amqp_groups.AmqpGroupReader`), used when ``client``
            is None; what it raises on failure is in its ``errors``.
    """

    def __init__(
        self,
        client: redis.Redis | None,
        queues: Sequence[str],
        settings: GroupSettings,
        *,
        live_ttl: float,
        clock: Callable[[], float] = time.time,
        reader: GroupReader | None = None,
    ) -> None:
        self.client = client
        self.reader = reader
        self._read_errors: tuple[type[BaseException], ...] = (
            redis.RedisError,
            *(getattr(reader, "errors", ()) if reader is not None else ()),
        )
        self.groups = list(settings.worker_groups)
        self.preferred = settings.group_preferred
        self.max_age = settings.group_max_age
        self.refresh_s = settings.group_refresh_ms / 1000
        self.live_ttl = live_ttl
        self.clock = clock
        self.queues = {q: [group_queue(q, g) for g in self.groups] for q in queues}
        self._all = [gq for names in self.queues.values() for gq in names]
        self._script = None if client is None else client.register_script(LUA_PATH.read_text())
        self._lock = threading.Lock()
        self._readings: dict[str, GroupReading] = {}
        self._read_at = float("-inf")
        self._rings: dict[tuple[str, ...], Any] = {}
        self.readings_taken = 0

    def readings(self) -> dict[str, GroupReading]:
        """The cached readings, refreshed first if older than ``refresh_s``."""
        now = self.clock()
        if (
            (self.client is not None or self.reader is not None)
            and now - self._read_at >= self.refresh_s
            and self._lock.acquire(blocking=False)
        ):
            try:  # one thread refreshes; the others use the reading they have
                self._readings = self._read(now)
                self.readings_taken += 1
            except self._read_errors:
                pass  # the broker away: keep the last reading, ask again later
            finally:
                self._read_at = now
                self._lock.release()
        return self._readings

    def _read(self, now: float) -> dict[str, GroupReading]:
        if self.client is None:
            assert self.reader is not None
            return self.reader(self._all)
        assert self._script is not None
        keys: list[str] = []
        for name in self._all:
            keys += [*redis_priority_keys(name), WATCH_PREFIX + name]
        pipe = self.client.pipeline(transaction=False)
        self._script(keys=keys, args=[repr(now), len(ALL_PRIORITY_STEPS), WATCH_TTL_S], client=pipe)
        for name in self._all:
            pipe.zcount(consumers_key(name), now - self.live_ttl, "+inf")
        depth, *live = pipe.execute()
        return {
            name: GroupReading(int(depth[2 * i]), float(depth[2 * i + 1]), int(live[i]))
            for i, name in enumerate(self._all)
        }

    def healthy(self, readings: dict[str, GroupReading], name: str) -> bool:
        """Whether group queue ``name`` has a live consumer and no job waiting too long."""
        reading = readings.get(name)
        if reading is None:
            return True  # never read: no reason to fail over
        too_old = self.max_age is not None and reading.age > self.max_age
        return reading.consumers > 0 and not too_old

    def route(self, queue: str, group: str | None = None, affinity: str | None = None) -> str:
        """The group queue a job bound for pool queue ``queue`` goes to.

        Args:
            group: The group asked for (default: the client's ``group_preferred``).
            affinity: A key whose jobs should stay on one group (consistent hash).

        Raises:
            ValueError: ``group`` is not a declared group.
        """
        wanted = self.preferred if group is None else group
        if wanted is not None and wanted not in self.groups:
            raise ValueError(f"unknown worker group {wanted!r}; groups: {self.groups}")
        names = self.queues[queue]
        readings = self.readings()
        live = [
            g for g, name in zip(self.groups, names, strict=True) if self.healthy(readings, name)
        ]
        if wanted is not None and (wanted in live or not live):
            return group_queue(queue, wanted)
        pool = live or self.groups
        if affinity is not None:
            return group_queue(queue, self._ring(tuple(pool)).get_node(affinity))
        return min(
            (group_queue(queue, g) for g in pool),
            key=lambda name: readings[name].backlog if name in readings else 0,
        )

    def place(self, queues: list[str], group: str | None, affinity: str | None) -> None:
        """Replace each pool queue in ``queues`` by its chosen group queue (one choice per
        pool queue: a batch's jobs of one pool go to one group)."""
        chosen = {q: self.route(q, group, affinity) for q in set(queues)}
        queues[:] = [chosen[q] for q in queues]

    def _ring(self, groups: tuple[str, ...]) -> Any:
        """A consistent-hash ring over ``groups`` (built once per set of groups)."""
        ring = self._rings.get(groups)
        if ring is None:
            from uhashring import HashRing

            ring = self._rings[groups] = HashRing(nodes=list(groups))
        return ring


def router_for(
    settings: GroupSettings, queues: Sequence[str], broker_url: str, broker: Settings
) -> GroupRouter:
    """A client's router: readings from the broker's Redis, live consumers by the heartbeat
    TTL (``TASKFLEET_RESILIENCE_HEARTBEAT_TTL``); on RabbitMQ, from RabbitMQ itself."""
    from taskfleet.config.resilience import get_resilience_settings

    ttl = get_resilience_settings().heartbeat_ttl
    if broker.broker_is_redis:
        return GroupRouter(redis.Redis.from_url(broker_url), queues, settings, live_ttl=ttl)
    reader = None
    if broker.broker_is_amqp:
        from taskfleet.routing.amqp_groups import AmqpGroupReader

        reader = AmqpGroupReader(broker_url)
    return GroupRouter(None, queues, settings, live_ttl=ttl, reader=reader)
