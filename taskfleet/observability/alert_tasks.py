"""The beat task ``observability.alert_tick``, run on the I/O pool.

Every worker declares it (each imports every job module), but only the one that runs an
evaluation needs the evaluator, the fleet gauges, the metrics endpoint's readers (SQLAlchemy)
and the webhook's client (httpx): they are imported when an evaluation runs.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import redis
from celery import Celery

from taskfleet.config.alerts import ALERT_TASK, AlertSettings, load_alert_settings
from taskfleet.config.app_settings import settings_of
from taskfleet.config.services import resolve_services
from taskfleet.observability.jobs import MULTIPROC_ENV
from taskfleet.tasks.base import job
from taskfleet.tasks.job_app import app
from taskfleet.workers.resources import open_resources

if TYPE_CHECKING:
    from taskfleet.observability.fleet import FleetSources


def fleet_sources(celery_app: Celery, results: redis.Redis) -> FleetSources:
    """The fleet gauges' sources as ``/metrics`` reads them, for ``celery_app``'s fleet."""
    from taskfleet.observability.fleet import DEFAULT_UNACKED_KEY, FleetSources

    settings = settings_of(celery_app)
    broker = None
    if not settings.broker_is_amqp:
        broker = redis.Redis.from_url(resolve_services(settings).broker_url)
    options = dict(celery_app.conf.broker_transport_options or {})
    unacked = str(options.get("unacked_key", DEFAULT_UNACKED_KEY))
    return FleetSources(settings, results, broker, unacked)


def evaluate_alerts(
    celery_app: Celery, settings: AlertSettings, results: redis.Redis
) -> dict[str, Any]:
    """One fleet-wide evaluation with ``settings`` (rules, webhook, interval)."""
    from taskfleet.observability.alert_notify import WebhookNotifier
    from taskfleet.observability.alert_rules import load_rules
    from taskfleet.observability.alerting import AlertEvaluator
    from taskfleet.observability.server import WorkerFiles

    evaluator = AlertEvaluator(
        results, load_rules(settings.rules_file), settings.interval_s, settings.state_ttl_s
    )
    notifier = WebhookNotifier(settings.webhook_url, settings.webhook_timeout_s)
    sources = fleet_sources(celery_app, results)
    folder = settings.metrics_dir or os.environ.get(MULTIPROC_ENV)
    try:
        return evaluator.tick(
            sources, notifier, job_metrics=WorkerFiles(str(folder)) if folder else None
        )
    finally:
        notifier.close()
        if sources.broker is not None:
            sources.broker.close()


# send_events=False: an internal job sends no task events, so Flower's Tasks page shows
# jobs, not an evaluation every interval.
@job(app, ALERT_TASK, "io", ignore_result=True, send_events=False)
def alert_tick(payload: Any = None) -> dict[str, Any]:
    """Evaluate the alert rules once, fleet-wide; notify each firing and resolve.

    Idempotent under redelivery: a repeated evaluation within an interval is refused.
    """
    return evaluate_alerts(app, load_alert_settings(), open_resources(settings_of(app)).redis)
