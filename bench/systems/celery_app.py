"""The stock Celery 5.7 app the ``celery_*`` systems run (``celery -A bench.systems.celery_app``).

Workers configure it from the environment; the bench builds its producer-side apps with
:func:`make_app` and the same values:

* ``BENCH_CELERY_BROKER``: broker URL (Redis).
* ``BENCH_CELERY_BACKEND``: result backend URL, or empty for none.
* ``BENCH_CELERY_IGNORE``: ``1`` to ``ignore_result`` and count completions in Redis instead.
* ``BENCH_CELERY_COUNTER_URL``: Redis URL holding that completion counter.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import redis
from celery import Celery

BROKER_ENV = "BENCH_CELERY_BROKER"
BACKEND_ENV = "BENCH_CELERY_BACKEND"
IGNORE_ENV = "BENCH_CELERY_IGNORE"
COUNTER_URL_ENV = "BENCH_CELERY_COUNTER_URL"
COUNTER_KEY = "bench:celery:done"
QUEUE = "bench"
TASK_NAME = "bench.noop"


@cache
def _counter(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def make_app(
    broker: str | None, backend: str | None, *, ignore: bool, counter_url: str | None
) -> tuple[Celery, Any]:
    """A stock Celery app (defaults untouched but the queue name) and its no-op task.

    Args:
        broker: Broker URL.
        backend: Result backend URL, or None.
        ignore: ``ignore_result`` on the task; completions are INCRed in ``counter_url``.
        counter_url: Redis URL of the completion counter (ignore mode).

    Returns:
        The app and the task.
    """
    celery_app = Celery("bench", broker=broker, backend=backend or None)
    celery_app.conf.task_default_queue = QUEUE
    celery_app.conf.broker_connection_retry_on_startup = True

    @celery_app.task(name=TASK_NAME, ignore_result=ignore)
    def noop(payload: Any = None) -> dict[str, Any]:
        """Do nothing; in ignore mode count the completion in Redis."""
        if ignore and counter_url:
            _counter(counter_url).incr(COUNTER_KEY)
        return {"ok": True}

    return celery_app, noop


app, noop = make_app(
    os.environ.get(BROKER_ENV),
    os.environ.get(BACKEND_ENV),
    ignore=os.environ.get(IGNORE_ENV) == "1",
    counter_url=os.environ.get(COUNTER_URL_ENV),
)
