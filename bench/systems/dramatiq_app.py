"""The Dramatiq broker and actor for the ``dramatiq`` system (``dramatiq bench.systems.dramatiq_app``).

``BENCH_DRAMATIQ_REDIS_URL`` names the Redis database for both the broker and the results;
the bench sets it before importing this module, the workers inherit it.
"""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

REDIS_URL_ENV = "BENCH_DRAMATIQ_REDIS_URL"
QUEUE = "bench"

_url = os.environ.get(REDIS_URL_ENV, "redis://127.0.0.1:6379/5")
broker = RedisBroker(url=_url)
backend = RedisBackend(url=_url)
broker.add_middleware(Results(backend=backend))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, store_results=True, max_retries=0)
def noop(payload: Any = None) -> dict[str, Any]:
    """Do nothing; the result middleware stores the return value in Redis."""
    return {"ok": True}
