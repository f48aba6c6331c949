"""The Celery app's configuration, without jobs or worker hooks: what a producer needs.

:func:`create_app` builds a taskfleet app (lazily configured: nothing connects, and the
embedded stack is not started, until its configuration is first read). A producer
(``taskfleet.client``) uses :func:`producer_app`; the worker's entry point, ``taskfleet.app``,
creates its app here too, then declares the jobs and installs the worker hooks.
"""

from __future__ import annotations

import functools
from typing import Any

from celery import Celery

from taskfleet.config import Settings, resolve_services
from taskfleet.config.alerts import alert_schedule
from taskfleet.config.app_settings import SETTINGS_ATTR, settings_of
from taskfleet.config.sharding import load_sharding_settings
from taskfleet.routing.priority import ALL_PRIORITY_STEPS, DEFAULT_PRIORITY
from taskfleet.routing.stock_transport import STOCK_TRANSPORT_PATH
from taskfleet.routing.sweep_schedule import group_sweep_schedule
from taskfleet.routing.topology import DEFAULT_INBOX, Pool, Topology, pool_for_kind
from taskfleet.routing.transport import TRANSPORT_PATH
from taskfleet.scheduler.schedule import autoscale_schedule
from taskfleet.tasks.table import JOB_POOLS

RESULT_BACKEND_PATH = "taskfleet.results.backend:TaskfleetResultBackend"
#: Retries of a result write when Redis is unreachable (Celery's default is forever, which
#: wedges a worker slot instead of failing loudly).
RESULT_STORE_MAX_RETRIES = 20


#: Celery's remote control, its ``hello`` (a starting worker's sync with the others) waiting
#: 0.2 s for replies instead of a second (``taskfleet.workers.mingle``; a string:
#: nothing is imported until the app's control is first used).
CONTROL_PATH = "taskfleet.workers.mingle:Control"


def _declared_pools(name: str, task: Any) -> dict[str, Pool]:
    """The pool declared for ``name``: the job table's, else its task's own.

    A kind outside the table is one declared with ``job`` on an app of one's own.
    """
    if name in JOB_POOLS:
        return {name: JOB_POOLS[name]}
    pool: Pool | None = getattr(task, "pool", None)
    return {name: pool} if pool is not None else {}


def make_router(topology: Topology) -> Any:
    """A Celery router sending each job kind to its pool's queue (an explicit ``queue=`` wins)."""

    def route_task(
        name: str, args: Any, kwargs: Any, options: dict[str, Any], task: Any = None, **_: Any
    ) -> dict[str, str]:
        try:
            pool = pool_for_kind(name, _declared_pools(name, task))
        except LookupError:
            return {"queue": DEFAULT_INBOX}
        return {"queue": topology.queue_for_pool(pool)}

    return route_task


def redis_transport_path(settings: Settings) -> str:
    """The kombu transport of a Redis broker: taskfleet's, or with ``fast_transport`` off
    stock kombu's (with taskfleet's priority order, ``routing/stock_transport.py``)."""
    return TRANSPORT_PATH if settings.fast_transport else STOCK_TRANSPORT_PATH


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings taskfleet runs with, derived from validated settings."""
    urls = resolve_services(settings)
    topology = Topology.from_settings(settings)
    config: dict[str, Any] = {
        "broker_url": urls.broker_url,
        "result_backend": RESULT_BACKEND_PATH,
        "taskfleet_redis_url": urls.redis_url,
        "taskfleet_database_url": urls.database_url,
        "taskfleet_database_urls": load_sharding_settings().database_urls,  # None: unsharded
        # JSON only: a pickle body is refused by the worker, never deserialised.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        # At-least-once: ack after the job ran; a job whose worker died is redelivered.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_priority": DEFAULT_PRIORITY,
        "task_queues": topology.all_queues(),
        "task_default_queue": DEFAULT_INBOX,
        "task_create_missing_queues": False,
        "task_routes": (make_router(topology),),
        "task_soft_time_limit": settings.soft_time_limit,
        "task_time_limit": settings.hard_time_limit,
        "result_expires": settings.result_expires,
        "taskfleet_result_retention": settings.result_retention,  # Postgres (results/backend.py)
        "result_extended": True,
        "result_backend_always_retry": True,
        "result_backend_max_retries": RESULT_STORE_MAX_RETRIES,
        # One backend (one Redis pool) per process: gevent greenlets would otherwise each
        # build their own, a new connection per job (the redis client is thread-safe).
        "result_backend_thread_safe": True,
        "result_backend_transport_options": {"visibility_timeout": settings.visibility_timeout},
        # No cap on result connections: a gevent worker shares one backend between all its
        # greenlets, so it needs up to TASKFLEET_IO_CONCURRENCY of them (a capped pool
        # raises "Too many connections"; redis-py's blocking pool stalls gevent: measured
        # 25 jobs/s against 285).
        "broker_connection_retry_on_startup": True,
        # Jobs running when the broker connection drops run to the end (their acks fail; the
        # deliveries are restored, and the redelivered copies skip as already finished).
        # Cancelling them terminates pool processes mid-reconnect, and billiard then lost a
        # job handed to the pool (never run, its record left in `unacked`): 4 of 9
        # `restart-redis` chaos runs with True, 0 of 5 with False.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # Off by default, as in stock Celery (events cost ~25% of no-op throughput, measured);
        # Flower switches them on in the running workers when it starts.
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": False,
        "worker_hijack_root_logger": False,
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout},
        # The autoscaler tick (issue 7) and the alert evaluation (issue 22).
        "beat_schedule": autoscale_schedule() | alert_schedule() | group_sweep_schedule(settings),
    }
    if settings.broker_is_redis:
        config["broker_transport"] = redis_transport_path(settings)
        config["broker_transport_options"] |= {
            "priority_steps": ALL_PRIORITY_STEPS,
            "queue_order_strategy": "priority",
        }
        if settings.fast_transport:  # stock kombu has no such option
            config["broker_transport_options"]["atomic_fetch"] = settings.atomic_fetch
    else:
        config["broker_transport_options"] = {"confirm_publish": True}
    return config


def create_app(settings: Settings | None = None) -> Celery:
    """A taskfleet Celery app; configuration is evaluated when first needed."""
    celery_app = Celery(
        "taskfleet", task_cls="taskfleet.tasks.base:TaskfleetTask", control=CONTROL_PATH
    )
    setattr(celery_app, SETTINGS_ATTR, settings)
    celery_app.add_defaults(lambda: celery_config(settings_of(celery_app)))
    return celery_app


@functools.cache
def producer_app() -> Celery:
    """The process's producer app: :func:`create_app` with the process-wide settings.

    It declares no job and installs no worker hook; the job table routes its messages.
    """
    return create_app()
