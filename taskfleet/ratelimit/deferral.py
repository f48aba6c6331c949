"""Deferring a job to its slot: re-queued at the front of its queue with an ETA.

Celery's ``retry(countdown=...)`` re-publishes at the back of the queue: behind a backlog the
job is fetched only after everything queued before it, long after its slot, and jobs that
missed their slots then run together, over the rate. So on a Redis broker a deferred job is
pushed on the side workers take from (as :mod:`taskfleet.routing.reclaim` restores jobs),
with its ETA: a worker fetches it at once and keeps it in its timer, not in a process (Celery
raises the prefetch for each ETA job), until its slot. The original delivery is acked
(``Ignore``); its id, arguments, priority, queue and ``taskfleet_*`` headers are kept and
``retries`` counts one more, as a retry would.

A job in a chain, chord or group, or with callbacks, and any job on RabbitMQ, is deferred with
Celery's retry instead (which carries those along).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import redis
from celery.exceptions import Ignore

from taskfleet.config.settings import REDIS_SCHEMES
from taskfleet.publishing.base import CLIENT_HEADER
from taskfleet.routing.depth import redis_priority_key
from taskfleet.routing.wire import TaskMessage

if TYPE_CHECKING:
    from celery import Task

#: Celery's retry needs a bound; deferrals must never reach it.
DEFER_MAX_RETRIES = 1_000_000
#: Request fields that tie a job to others (then Celery's retry defers it).
LINKED_FIELDS = ("chain", "callbacks", "errbacks", "chord", "group")

_broker: tuple[int, redis.Redis] | None = None


def _broker_client() -> redis.Redis | None:
    """This process's client on the broker if it is Redis (None on RabbitMQ)."""
    global _broker
    if _broker is not None and _broker[0] == os.getpid():
        return _broker[1]
    from urllib.parse import urlsplit

    from taskfleet.config import get_settings, resolve_services

    url = resolve_services(get_settings()).broker_url
    if urlsplit(url).scheme.lower() not in REDIS_SCHEMES:
        return None
    _broker = (os.getpid(), redis.Redis.from_url(url))
    return _broker[1]


def defer(
    task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], countdown: float, exc: Exception
) -> Exception:
    """Re-queue the job to run in ``countdown`` seconds; the exception that ends this run.

    Returns:
        ``Ignore``, once re-queued at the front of its queue (Redis: the delivery is acked).

    Raises:
        Retry: linked jobs and RabbitMQ are deferred with Celery's retry.
    """
    req = task.request
    delivery = req.delivery_info or {}
    queue = str(delivery.get("routing_key") or "")
    client = _broker_client() if queue else None
    if client is None or any(getattr(req, name, None) for name in LINKED_FIELDS):
        client_id = getattr(req, CLIENT_HEADER, None)
        # The re-queued message keeps its sender (a header Celery's retry would not copy).
        options = {} if client_id is None else {"headers": {CLIENT_HEADER: client_id}}
        raise task.retry(countdown=countdown, max_retries=DEFER_MAX_RETRIES, exc=exc, **options)
    priority = int(delivery.get("priority") or 0)
    headers = {k: v for k, v in vars(req).items() if k.startswith("taskfleet_")}
    headers |= {"retries": (req.retries or 0) + 1, "root_id": req.root_id or req.id}
    headers["parent_id"] = req.parent_id
    eta = (datetime.now(UTC) + timedelta(seconds=countdown)).isoformat()
    message = TaskMessage.build(
        task.name,
        list(args),
        dict(kwargs),
        job_id=str(req.id),
        priority=priority,
        queue=queue,
        extra_headers=headers,
        eta=eta,
    )
    client.rpush(redis_priority_key(queue, priority), message.redis_envelope())
    done: Exception = Ignore()
    return done
