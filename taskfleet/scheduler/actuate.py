"""Resize workers with remote control (``taskfleet_pool_grow`` / ``pool_shrink``).

Each command is addressed to one worker and waits for its reply (bounded); a worker that
does not answer is reported, never retried blindly. Both commands are taskfleet's own (see
``taskfleet.scheduler.control``): growing forks at once, and shrinking stops only idle
processes, in one pass, and replies with how many it stopped. A slot group (solo workers run
by a supervisor, ``taskfleet.scheduler.slots``) is resized by the size asked of it in Redis.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from taskfleet.scheduler.control import GROW_NOW_COMMAND, SHRINK_NOW_COMMAND, SHRUNK_PREFIX
from taskfleet.scheduler.model import Decision, WorkerView
from taskfleet.scheduler.slots import SlotRegistry
from taskfleet.scheduler.store import AutoscaleStore

log = logging.getLogger(__name__)


def _command(app: Celery, name: str, host: str, n: int, timeout: float) -> tuple[str, str]:
    """Send one control command to ``host``; return (``ok``/``no reply``/error, message)."""
    replies: list[dict[str, Any]] = (
        app.control.broadcast(
            name, arguments={"n": n}, destination=[host], reply=True, timeout=timeout, limit=1
        )
        or []
    )
    for reply in replies:
        answer = reply.get(host) or {}
        if "ok" in answer:
            return "ok", str(answer["ok"])
        if "error" in answer:
            return f"error: {answer['error']}", ""
    return "no reply", ""


def resize_worker(
    app: Celery, worker: WorkerView, delta: int, timeout: float, slots: SlotRegistry | None = None
) -> tuple[int, str]:
    """Grow (``delta`` > 0) or shrink one worker; returns the change applied and the outcome.

    A slot group is resized by asking its supervisor for the new process count in Redis
    (``slots``); the supervisor starts or stops processes within a second or so.
    """
    if worker.slots:
        if slots is None:
            return 0, "no slot registry"
        slots.set_target(worker.hostname, worker.concurrency + delta)
        return delta, "ok"
    if delta > 0:
        outcome, _ = _command(app, GROW_NOW_COMMAND, worker.hostname, delta, timeout)
        return (delta if outcome == "ok" else 0), outcome
    outcome, message = _command(app, SHRINK_NOW_COMMAND, worker.hostname, -delta, timeout)
    if outcome != "ok":
        return 0, outcome
    stopped = message.removeprefix(SHRUNK_PREFIX)
    return (-int(stopped) if stopped.isdigit() else delta), outcome


def actuate(
    app: Celery,
    decision: Decision,
    workers: tuple[WorkerView, ...],
    store: AutoscaleStore,
    timeout: float,
) -> dict[str, Any]:
    """Apply a decision's per-worker changes; returns what happened to each worker."""
    by_host = {w.hostname: w for w in workers}
    results: dict[str, Any] = {}
    for host, delta in decision.changes.items():
        worker = by_host[host]
        applied, outcome = resize_worker(app, worker, delta, timeout, SlotRegistry(store.client))
        if applied and worker.prefork:
            store.set_prefork_size(host, worker.pid, worker.concurrency + applied)
        results[host] = {"asked": delta, "applied": applied, "outcome": outcome}
        if outcome != "ok":
            log.warning("autoscale: %s on %s: %s", decision.action, host, outcome)
    return results
