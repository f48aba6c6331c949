"""Worker lifecycle handlers: per-process pools, and the result persister and heartbeat
sidecar in the main process.

Importing this module connects nothing: ``taskfleet.workers.hooks.install_worker_hooks``
connects these handlers to Celery's signals, in its documented order, and names the app they
serve (:func:`serve`), so this module never imports the app.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from celery import Celery

from taskfleet.config.app_settings import settings_of
from taskfleet.config.sharding import DATABASE_URLS_ENV
from taskfleet.observability.tracing import instrument_worker
from taskfleet.results.backend import TaskfleetResultBackend
from taskfleet.routing import fetch_batch
from taskfleet.routing.bookkeeping import run_jobs_inline
from taskfleet.workers.capacity import size_for_green_worker
from taskfleet.workers.heap import settle_heap
from taskfleet.workers.heartbeat import start_sidecar
from taskfleet.workers.persister_watch import PersisterWatch, stuck_after
from taskfleet.workers.pools import GREEN_POOLS, pool_kind
from taskfleet.workers.profiles import DISABLE_PERSISTER_ENV, READY_DIR_ENV
from taskfleet.workers.resources import close_resources, open_resources

log = logging.getLogger(__name__)
_persister: PersisterWatch | None = None
_heartbeat: subprocess.Popen[bytes] | None = None
#: The app these hooks serve (:func:`serve`); until then, the process-wide settings.
_app: Celery | None = None
PERSISTER_STOP_TIMEOUT_S = 15.0


def serve(celery_app: Celery) -> None:
    """Make these hooks serve ``celery_app``: its settings, its result backend."""
    global _app
    _app = celery_app


def _taskfleet_backend() -> TaskfleetResultBackend | None:
    """The served app's result backend, if it is taskfleet's."""
    backend = _app.backend if _app is not None else None
    return backend if isinstance(backend, TaskfleetResultBackend) else None


def open_child_pools(**_: Any) -> None:
    """Each prefork child opens its own Redis pool and SQLAlchemy engine, then freezes its heap."""
    settings = settings_of(_app)
    open_resources(settings)
    if settings.pipeline_result_writes:
        _pipeline_result_writes()
    settle_heap(settings.settle_heap, collect=False)  # inherited pages stay shared (heap.py)


def _pipeline_result_writes() -> None:
    """This process runs one job at a time: its result writes go without waiting for Redis
    (``taskfleet.results.pipelining``)."""
    if (backend := _taskfleet_backend()) is not None:
        backend.pipeline_stores()


def open_solo_pools(sender: Any = None, **_: Any) -> None:
    """A gevent (or solo) worker runs jobs in its own process: open its pools at start.

    A gevent worker first sizes its Redis pools to its greenlet ceiling (``capacity``). A
    solo one pipelines its result writes, as a prefork pool process does (measured on W1:
    +14-23% jobs/s over a synchronous write). A prefork one loads what its pool processes
    share (:func:`preload_for_pool_processes`).
    Every worker's main process then settles its heap (``heap``), a prefork one before it forks.
    """
    settings = settings_of(_app)
    pool_cls = getattr(sender, "pool_cls", None)
    kind = pool_kind(pool_cls)
    if kind in GREEN_POOLS:
        cap = size_for_green_worker(sender.app, int(sender.concurrency))
        log.info("taskfleet: Redis pools of this green worker sized to %d connections", cap)
    if pool_cls is not None and kind != "prefork":
        open_resources(settings)
    if kind == "solo" and settings.pipeline_result_writes:
        _pipeline_result_writes()
    if kind == "prefork":
        preload_for_pool_processes()
    settle_heap(settings.settle_heap)


def preload_for_pool_processes() -> None:
    """A prefork worker's main process imports, before it forks, what its pool processes
    import only when a job needs it: SQLAlchemy and psycopg (the result reuse cache's
    Postgres tier, ``contract.process``). Its pool processes then share those pages instead of
    importing a copy each (~18 MiB a process). A solo or gevent worker imports them when a
    job first needs them, and a worker whose jobs never do, never.

    Measured, a prefork worker of 2 after 20 ``contract.process`` jobs: 145-150 MiB PSS for
    the tree with this preload, 168 MiB without it.
    """
    import psycopg  # noqa: F401
    import sqlalchemy.dialects.postgresql.psycopg  # noqa: F401

    import taskfleet.cache.tiered  # noqa: F401


def trace_inline_jobs(sender: Any = None, **_: Any) -> None:
    """A solo or gevent worker runs its jobs in its main process: it traces them there (a
    prefork worker's pool processes do, at ``worker_process_init``)."""
    if pool_kind(getattr(sender, "pool_cls", None)) != "prefork":
        instrument_worker()


def record_before_inline_jobs(sender: Any = None, **_: Any) -> None:
    """A solo worker runs each job inside its delivery: records must not wait for a BRPOP."""
    if pool_kind(getattr(sender, "pool_cls", None)) == "solo":
        run_jobs_inline()


def batch_fetches_in_solo_worker(sender: Any = None, **_: Any) -> None:
    """A solo worker with a backlog of short jobs takes several per fetch
    (``TASKFLEET_FETCH_BATCH``, :mod:`taskfleet.routing.fetch_batch`); any other, one."""
    solo = pool_kind(getattr(sender, "pool_cls", None)) == "solo"
    fetch_batch.configure(settings_of(getattr(sender, "app", None)).fetch_batch if solo else None)


def start_heartbeat(sender: Any = None, **_: Any) -> None:
    """On a Redis broker, start the sidecar that vouches for this worker's deliveries.

    Before the consumer starts: every delivery it records is tied to the worker from the
    first one, so a dead worker's jobs are restored in seconds (``workers/heartbeat.py``).
    The sidecar leaves by itself when this process exits. Only taskfleet's transport ties
    deliveries to their worker: on stock kombu's (``TASKFLEET_FAST_TRANSPORT=false``) no
    sidecar starts, and kombu's visibility-timeout restore brings a dead worker's jobs back.
    """
    global _heartbeat
    from taskfleet.config.resilience import get_resilience_settings

    app = getattr(sender, "app", None)
    if app is None or not settings_of(app).broker_is_redis:
        return
    if not settings_of(app).fast_transport:
        return
    knobs = get_resilience_settings()
    if not knobs.fast_reclaim:
        return
    consumed = getattr(getattr(app.amqp, "queues", None), "consume_from", None) or {}
    _heartbeat = start_sidecar(
        app,
        knobs.heartbeat_interval,
        knobs.heartbeat_ttl,
        knobs.reclaim_interval,
        sorted(consumed),
    )


def check_redis_policy(sender: Any = None, **_: Any) -> None:
    """Warn when the broker's or the state Redis may evict keys (``config/redis_policy.py``)."""
    from taskfleet.config.redis_policy import warn_if_evicting
    from taskfleet.config.services import resolve_services

    settings = settings_of(_app)
    urls = resolve_services(settings)
    redises = [urls.broker_url, urls.redis_url] if settings.broker_is_redis else [urls.redis_url]
    warn_if_evicting(redises, log)


def mark_ready(**_: Any) -> None:
    """Under ``taskfleet up``: leave ``<ready dir>/<pid>``, the supervisor's proof that this
    worker came up, even if a job kills it before any ping reaches it."""
    folder = os.environ.get(READY_DIR_ENV)
    if not folder:
        return
    with contextlib.suppress(OSError):
        os.makedirs(folder, exist_ok=True)
        Path(folder, str(os.getpid())).touch()


def settle_when_ready(**_: Any) -> None:
    """The main process has finished starting: exempt what it built since from collection."""
    settle_heap(settings_of(_app).settle_heap)


def _land_result_writes() -> None:
    """Wait for this process's pipelined result writes (pool process or solo worker)."""
    backend = _taskfleet_backend()
    if backend is not None:
        backend.confirm_stores(close=True)


def close_child_pools(**_: Any) -> None:
    """A pool process exits: land its pipelined result writes, close its pools."""
    _land_result_writes()
    close_resources()


def start_persister(sender: Any = None, **_: Any) -> None:
    """Start the process that drains finished results into Postgres in batches, watched:
    started again when it exits or stalls (``workers/persister_watch.py``).

    It is a separate process, not a thread: in a prefork worker the main process routes every
    message, and a busy thread there costs throughput through the GIL (measured: -20%).
    """
    global _persister
    if os.environ.get(DISABLE_PERSISTER_ENV) == "1":
        return
    sharded = os.environ.get(DATABASE_URLS_ENV)
    module = "taskfleet.sharding.service" if sharded else "taskfleet.results.persister"
    _persister = PersisterWatch([sys.executable, "-m", module], stuck_s=stuck_after())
    _persister.start()
    assert _persister.proc is not None
    log.info("taskfleet: result persister started (pid %s)", _persister.proc.pid)


def stop_main_process(**_: Any) -> None:
    """Worker shutdown: land the process's own result writes (solo), stop the persister."""
    global _persister
    _land_result_writes()
    if _persister is not None:
        _persister.stop(PERSISTER_STOP_TIMEOUT_S)
        _persister = None
    close_resources()
