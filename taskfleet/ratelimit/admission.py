"""Admission control: shed low-priority enqueues while a queue is overloaded.

A queue is overloaded while its backlog (messages waiting, every priority) passes
``overload_backlog`` or its oldest job has waited past ``overload_age``. Jobs at or above
``overload_admit_priority`` are still admitted; the others get :class:`Overloaded` with
``retry_after`` and nothing is published. Admission resumes by itself once a reading shows
the queue under its bounds again.

Readings are cached: a producer reads every queue's backlog at most once per
``overload_refresh_ms`` (one Lua call, ``backlog.lua``), never once per enqueue. The oldest
job's age is how long the message at the head of each priority sub-list has stood there, as
the fleet's readings saw it (the head watch is shared in Redis): the envelope carries no send
time, so this is a lower bound, late by at most one refresh interval.

Sheds are counted per queue in ``taskfleet:limits:stats:queue:<queue>`` (``limits status``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import redis

from taskfleet.ratelimit.errors import Overloaded
from taskfleet.ratelimit.store_base import KEY_PREFIX
from taskfleet.routing.depth import redis_priority_keys
from taskfleet.routing.transport import ALL_PRIORITY_STEPS

LUA_PATH = Path(__file__).with_name("backlog.lua")
WATCH_PREFIX = KEY_PREFIX + "head:"
SHED_PREFIX = KEY_PREFIX + "stats:queue:"
#: A head watch outlives the last reading by this long (seconds).
WATCH_TTL_S = 3600


class Reading(NamedTuple):
    """One queue's backlog and the age of its longest-standing head (seconds)."""

    backlog: int
    age: float


class OverloadGate:
    """Sheds enqueues below a priority while a queue is past its bounds. Thread-safe."""

    def __init__(
        self,
        client: redis.Redis,
        queues: Sequence[str],
        *,
        max_backlog: int | None,
        max_age: float | None,
        admit_priority: int,
        refresh_s: float,
        retry_after: float,
        counter_ttl: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.queues = list(queues)
        self.max_backlog, self.max_age = max_backlog, max_age
        self.admit_priority = admit_priority
        self.refresh_s, self.retry_after = refresh_s, retry_after
        self.counter_ttl = counter_ttl
        self.clock = clock
        self._script = client.register_script(LUA_PATH.read_text())
        self._lock = threading.Lock()
        self._readings: dict[str, Reading] = {}
        self._read_at = float("-inf")
        self.readings_taken = 0

    def readings(self) -> dict[str, Reading]:
        """The cached readings, refreshed first if older than ``refresh_s``."""
        now = self.clock()
        if now - self._read_at >= self.refresh_s and self._lock.acquire(blocking=False):
            try:  # one thread refreshes; the others use the reading they have
                self._readings = self._read(now)
                self._read_at = now
                self.readings_taken += 1
            except redis.RedisError:
                self._read_at = now  # Redis down: keep the last reading, ask again later
            finally:
                self._lock.release()
        return self._readings

    def _read(self, now: float) -> dict[str, Reading]:
        keys: list[str] = []
        for queue in self.queues:
            keys += [*redis_priority_keys(queue), WATCH_PREFIX + queue]
        reply = self._script(keys=keys, args=[repr(now), len(ALL_PRIORITY_STEPS), WATCH_TTL_S])
        return {
            queue: Reading(int(reply[2 * i]), float(reply[2 * i + 1]))
            for i, queue in enumerate(self.queues)
        }

    def overloaded(self, queue: str) -> bool:
        """Whether ``queue`` is past a bound, by the cached reading."""
        reading = self.readings().get(queue)
        if reading is None:
            return False
        return (self.max_backlog is not None and reading.backlog > self.max_backlog) or (
            self.max_age is not None and reading.age > self.max_age
        )

    def admit(self, queues: Iterable[str], priorities: Iterable[int]) -> None:
        """Admit a batch, or refuse it whole if a job below the bar goes to an overloaded queue.

        Raises:
            Overloaded: nothing of the batch may be published.
        """
        bar = self.admit_priority
        pairs = list(zip(queues, priorities, strict=True))
        for queue in sorted({queue for queue, level in pairs if level < bar}):
            if self.overloaded(queue):
                self._count_shed(queue, len(pairs))
                raise Overloaded(self.retry_after, queue)

    def _count_shed(self, queue: str, jobs: int) -> None:
        """Count ``jobs`` shed at ``queue`` (best effort: Redis may be what is overloaded)."""
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.hincrby(SHED_PREFIX + queue, "shed", jobs)
            pipe.expire(SHED_PREFIX + queue, self.counter_ttl)
            pipe.zadd(KEY_PREFIX + "index", {SHED_PREFIX + queue: self.clock()})
            pipe.execute()
        except redis.RedisError:
            pass  # the count is lost with Redis; the refusal stands
