"""Stock Celery 5.7 with ``ignore_result``: completion is a Redis counter plus an empty queue."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from bench.common import make_payload, poll_until
from bench.services import flush_redis, services
from bench.systems import celery_app as capp
from bench.systems.base import System
from bench.systems.celery_redis import celery_worker_argv


class CeleryIgnoreSystem(System):
    """Stock Celery, no result backend; each task INCRs a counter."""

    name = "celery_ignore"
    label = "Celery (ignore_result)"
    loop_label = "apply_async loop"
    per_job_results = False

    def __init__(self) -> None:
        """Build the producer app."""
        super().__init__()
        self.url = services().redis_for(self.name)
        self.app, self.task = capp.make_app(self.url, None, ignore=True, counter_url=self.url)
        self.redis = redis.Redis.from_url(self.url)

    def reset(self) -> None:
        """FLUSHDB."""
        flush_redis(self.url)

    def _spawn_workers(self, n_procs: int) -> None:
        self.workers.spawn(
            celery_worker_argv(n_procs, f"bench-{self.name}@%h"),
            {capp.BROKER_ENV: self.url, capp.IGNORE_ENV: "1", capp.COUNTER_URL_ENV: self.url},
        )

    def after_warmup(self) -> None:
        """Zero the counter so the measured batch counts from 0."""
        self.redis.delete(capp.COUNTER_KEY)

    def publish(self, n: int) -> list[Any]:
        """A loop of ``apply_async``."""
        return self._loop(n)

    def publish_one(self, index: int) -> Any:
        """One ``apply_async``."""
        self.task.apply_async((make_payload(index),))
        return index

    def done_flags(self, keys: Sequence[Any]) -> list[bool]:
        """Per-job results do not exist here: unsupported."""
        raise NotImplementedError("ignore_result: no per-job result to observe")

    def wait_all(self, keys: Sequence[Any], timeout: float) -> None:
        """Wait until the counter reaches ``len(keys)`` and the queue is empty."""
        target = len(keys)

        def check() -> bool:
            pipe = self.redis.pipeline(transaction=False)
            pipe.get(capp.COUNTER_KEY)
            pipe.llen(capp.QUEUE)
            count, depth = pipe.execute()
            if int(count or 0) >= target and depth == 0:
                return True
            self.workers.check_alive()
            return False

        poll_until(check, timeout, f"{target} {self.name} completions")
