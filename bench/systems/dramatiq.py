"""Dramatiq: Redis broker, Redis results middleware, ``dramatiq`` CLI with processes x threads."""

from __future__ import annotations

import importlib
import os
from typing import Any

from bench.common import make_payload
from bench.services import flush_redis, services
from bench.systems.base import RedisKeySystem

THREADS_PER_PROC = 8
APP_MODULE = "bench.systems.dramatiq_app"


class DramatiqSystem(RedisKeySystem):
    """Dramatiq with its Redis result backend; done means the result key exists."""

    #: The result backend LPUSHes the result onto the message's key.
    done_event = ("l", "lpush")

    name = "dramatiq"
    label = f"Dramatiq (x{THREADS_PER_PROC} threads)"
    loop_label = "send loop"

    def __init__(self) -> None:
        """Point the actor module at the system's Redis database and import it."""
        super().__init__()
        self.url = services().redis_for(self.name)
        os.environ["BENCH_DRAMATIQ_REDIS_URL"] = self.url
        self.mod = importlib.import_module(APP_MODULE)

    @property
    def result_url(self) -> str:
        """Results share the broker's database."""
        return self.url

    def reset(self) -> None:
        """FLUSHDB."""
        flush_redis(self.url)

    def _spawn_workers(self, n_procs: int) -> None:
        self.workers.spawn(
            [
                "dramatiq",
                APP_MODULE,
                "--processes",
                str(n_procs),
                "--threads",
                str(THREADS_PER_PROC),
                "--queues",
                self.mod.QUEUE,
            ],
            {"BENCH_DRAMATIQ_REDIS_URL": self.url},
        )

    def publish(self, n: int) -> list[Any]:
        """A loop of ``send`` (Dramatiq has no batch enqueue)."""
        return self._loop(n)

    def publish_one(self, index: int) -> Any:
        """One ``actor.send``; the key is where its result will be stored."""
        message = self.mod.noop.send(make_payload(index))
        return self.mod.backend.build_message_key(message)
