"""Stock Celery 5.7: Redis broker, Redis results, prefork workers, an ``apply_async`` loop."""

from __future__ import annotations

from typing import Any

from bench.common import make_payload
from bench.services import flush_redis, services
from bench.systems import celery_app as capp
from bench.systems.celery_meta import CeleryMetaSystem

WORKER_LOGLEVEL = "WARNING"


def celery_worker_argv(n_procs: int, hostname: str) -> list[str]:
    """``celery worker`` for the stock app: prefork, ``n_procs`` children, defaults otherwise.

    Args:
        n_procs: Pool processes.
        hostname: Node name.

    Returns:
        The command line.
    """
    return [
        "celery",
        "-A",
        "bench.systems.celery_app",
        "worker",
        "-P",
        "prefork",
        "-c",
        str(n_procs),
        "-Q",
        capp.QUEUE,
        "-n",
        hostname,
        "-l",
        WORKER_LOGLEVEL,
    ]


class CeleryRedisSystem(CeleryMetaSystem):
    """Stock Celery with Redis results."""

    name = "celery_redis"
    label = "Celery (Redis results)"
    loop_label = "apply_async loop"

    def __init__(self) -> None:
        """Build the producer app on the system's Redis database."""
        super().__init__()
        self.url = services().redis_for(self.name)
        self.app, self.task = capp.make_app(self.url, self.url, ignore=False, counter_url=None)

    @property
    def result_url(self) -> str:
        """Results share the broker's database."""
        return self.url

    def reset(self) -> None:
        """FLUSHDB."""
        flush_redis(self.url)

    def _spawn_workers(self, n_procs: int) -> None:
        self.workers.spawn(
            celery_worker_argv(n_procs, f"bench-{self.name}@%h"),
            {capp.BROKER_ENV: self.url, capp.BACKEND_ENV: self.url},
        )

    def publish(self, n: int) -> list[Any]:
        """A loop of ``apply_async`` (stock Celery has no batch publish)."""
        return self._loop(n)

    def publish_one(self, index: int) -> Any:
        """One ``apply_async``."""
        return self.task.apply_async((make_payload(index),)).id
