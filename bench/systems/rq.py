"""RQ: ``SimpleWorker`` processes (no fork per job), results in Redis."""

from __future__ import annotations

from typing import Any

import redis
from rq import Queue

from bench.common import make_payload
from bench.services import flush_redis, services
from bench.systems.base import EnqueueVariant, RedisKeySystem
from bench.systems.rq_jobs import noop

QUEUE = "bench"
RESULT_KEY_PREFIX = "rq:results:"
ENQUEUE_MANY_CHUNK = 1000


class RqSystem(RedisKeySystem):
    """RQ, one SimpleWorker per process; done means ``rq:results:<id>`` exists."""

    #: RQ appends each result to a per-job stream (``rq:results:<id>``).
    done_event = ("t", "xadd")

    name = "rq"
    label = "RQ (SimpleWorker)"

    def __init__(self) -> None:
        """Open the queue on the system's Redis database."""
        super().__init__()
        self.url = services().redis_for(self.name)
        self.queue = Queue(QUEUE, connection=redis.Redis.from_url(self.url))

    @property
    def result_url(self) -> str:
        """Results share the queue's database."""
        return self.url

    def reset(self) -> None:
        """FLUSHDB."""
        flush_redis(self.url)

    def _spawn_workers(self, n_procs: int) -> None:
        for index in range(n_procs):
            self.workers.spawn(
                [
                    "rq",
                    "worker",
                    "--url",
                    self.url,
                    "--worker-class",
                    "rq.worker.SimpleWorker",
                    "--name",
                    f"bench-rq-{index}-{id(self)}",
                    "--quiet",
                    QUEUE,
                ],
                {},
            )

    def publish(self, n: int) -> list[Any]:
        """``Queue.enqueue_many`` in chunks (one pipeline each)."""
        keys: list[Any] = []
        for start in range(0, n, ENQUEUE_MANY_CHUNK):
            batch = [
                Queue.prepare_data(noop, (make_payload(i),))
                for i in range(start, min(n, start + ENQUEUE_MANY_CHUNK))
            ]
            keys += [RESULT_KEY_PREFIX + job.id for job in self.queue.enqueue_many(batch)]
        return keys

    def publish_one(self, index: int) -> Any:
        """One ``Queue.enqueue``."""
        return RESULT_KEY_PREFIX + self.queue.enqueue(noop, make_payload(index)).id

    def enqueue_variants(self) -> list[EnqueueVariant]:
        """A loop of ``enqueue`` and ``enqueue_many``."""
        return [
            EnqueueVariant("enqueue loop", "loop", self._loop),
            EnqueueVariant("enqueue_many", "batch", self.publish),
        ]
