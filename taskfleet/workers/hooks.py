"""Every signal handler and bootstep a taskfleet worker gets, installed by one call.

Importing a taskfleet module connects nothing: the handlers and bootsteps are plain
definitions in their modules, and :func:`install_worker_hooks` installs them all, here and
nowhere else (``taskfleet.app``, the ``celery -A`` entry point, calls it once). As with
dramatiq's middleware, what a worker does beyond stock Celery is read from one list.

Signal handlers, :data:`SIGNAL_HOOKS`, connected in this order (Celery calls the receivers
of one signal in the order they were connected):

``worker_init`` (main process, before the consumer starts)
    1. ``job_logs.quiet_job_lines``: Celery's two INFO lines per job, off unless
       ``TASKFLEET_LOG_JOBS``.
    2. ``inline_limits.enforce_in_solo_worker``: a solo worker enforces time limits itself.
    3. ``signals.open_solo_pools``: a gevent or solo worker opens its pools (a green one
       sized to its greenlets); a prefork one preloads what its pool processes share;
       every main process settles its heap.
    4. ``signals.record_before_inline_jobs``: a solo worker records deliveries at once.
    5. ``signals.batch_fetches_in_solo_worker``: a solo worker takes several short jobs per
       fetch when its queue has a backlog.
    6. ``signals.start_heartbeat``: the heartbeat sidecar, before the first delivery (on
       taskfleet's own Redis transport only: stock kombu's tags no delivery with its owner).
    7. ``signals.trace_inline_jobs``: with ``TASKFLEET_TRACING``, a solo or gevent worker
       traces its jobs.

``worker_process_init`` (each prefork pool process)
    8. ``signals.open_child_pools``: its own pools, pipelined result writes, heap settled.
    9. ``observability.tracing.instrument_worker``: with ``TASKFLEET_TRACING``, it traces.

``worker_ready`` (main process, started)
    10. ``signals.start_persister``: the result persister process.
    11. ``signals.check_redis_policy``: warn when a Redis may evict keys.
    12. ``signals.settle_when_ready``: settle what the start-up built.
    13. ``signals.mark_ready``: under ``taskfleet up``, the mark that it came up.

``worker_process_shutdown``
    14. ``signals.close_child_pools``: land the process's result writes, close its pools.
    15. ``observability.jobs.mark_child_dead``: drop the process's live metric gauges.
    16. ``observability.tracing.flush_worker``: export the process's last spans.

``worker_shutdown``
    17. ``signals.stop_main_process``: land result writes, stop the persister, close pools.
    18. ``observability.tracing.flush_worker``: export the process's last spans.

``task_prerun`` / ``task_postrun`` (the process running the job)
    19. ``observability.jobs.on_task_prerun``: the job's start and queue wait.
    20. ``observability.jobs.on_task_postrun``: jobs by kind and state, run time.

Bootsteps, :data:`BOOTSTEPS`, added to the app's blueprints (Celery orders them by their
``requires``, not by this list):

* consumer ``resilience.consumer.DeadLetterConsumerStep``: dead-letter messages no task can
  handle.
* consumer ``prefetch.SparePrefetchStep``: one spare reserved job per worker.
* consumer ``standby.StandbyStep``: a standby solo CPU worker (``TASKFLEET_STANDBY_GROUP``
  set) takes the CPU queues once its slot group registers it; idle in any other worker.
* worker ``timers.PurgeCancelledTimers``: purge cancelled time-limit timers.
* worker ``inline_limits.LiftBackstopWhenIdle``: a solo worker's CPU backstop is lifted when
  it is idle, not after every job.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from celery import Celery, signals
from celery.utils.dispatch import Signal

from taskfleet.observability import jobs as job_metrics
from taskfleet.observability import tracing
from taskfleet.resilience.consumer import DeadLetterConsumerStep
from taskfleet.workers import signals as lifecycle
from taskfleet.workers.inline_limits import LiftBackstopWhenIdle, enforce_in_solo_worker
from taskfleet.workers.job_logs import quiet_job_lines
from taskfleet.workers.prefetch import SparePrefetchStep
from taskfleet.workers.standby import StandbyStep
from taskfleet.workers.timers import PurgeCancelledTimers

#: (signal, handler) in connection order; see the module docstring for what each does.
SIGNAL_HOOKS: Final[tuple[tuple[Signal, Callable[..., Any]], ...]] = (
    (signals.worker_init, quiet_job_lines),
    (signals.worker_init, enforce_in_solo_worker),
    (signals.worker_init, lifecycle.open_solo_pools),
    (signals.worker_init, lifecycle.record_before_inline_jobs),
    (signals.worker_init, lifecycle.batch_fetches_in_solo_worker),
    (signals.worker_init, lifecycle.start_heartbeat),
    (signals.worker_init, lifecycle.trace_inline_jobs),
    (signals.worker_process_init, lifecycle.open_child_pools),
    (signals.worker_process_init, tracing.instrument_worker),
    (signals.worker_ready, lifecycle.start_persister),
    (signals.worker_ready, lifecycle.check_redis_policy),
    (signals.worker_ready, lifecycle.settle_when_ready),
    (signals.worker_ready, lifecycle.mark_ready),
    (signals.worker_process_shutdown, lifecycle.close_child_pools),
    (signals.worker_process_shutdown, job_metrics.mark_child_dead),
    (signals.worker_process_shutdown, tracing.flush_worker),
    (signals.worker_shutdown, lifecycle.stop_main_process),
    (signals.worker_shutdown, tracing.flush_worker),
    (signals.task_prerun, job_metrics.on_task_prerun),
    (signals.task_postrun, job_metrics.on_task_postrun),
)

#: (blueprint, bootstep class): ``"worker"`` or ``"consumer"`` steps of the worker's app.
BOOTSTEPS: Final[tuple[tuple[str, type], ...]] = (
    ("consumer", DeadLetterConsumerStep),
    ("consumer", SparePrefetchStep),
    ("consumer", StandbyStep),
    ("worker", PurgeCancelledTimers),
    ("worker", LiftBackstopWhenIdle),
)

#: Set on an app once its worker hooks are installed.
INSTALLED_ATTR = "taskfleet_worker_hooks_installed"


def install_worker_hooks(celery_app: Celery) -> None:
    """Install every worker hook for ``celery_app``: its bootsteps, then the signal handlers.

    The handlers serve ``celery_app`` (its settings, its result backend). Idempotent: a
    second call for the same app installs nothing, and a handler is connected once however
    many apps are installed (Celery's signals are process-wide).

    Args:
        celery_app: The app the worker runs (``taskfleet.app.app``).
    """
    if getattr(celery_app, INSTALLED_ATTR, False):
        return
    for blueprint, step in BOOTSTEPS:
        celery_app.steps[blueprint].add(step)
    lifecycle.serve(celery_app)
    for signal, handler in SIGNAL_HOOKS:
        signal.connect(handler, weak=False)
    setattr(celery_app, INSTALLED_ATTR, True)
