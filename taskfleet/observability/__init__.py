"""Observability: Prometheus metrics, the per-host ``/metrics`` endpoint, health probes.

* :mod:`~taskfleet.observability.jobs`: job counters and histograms, recorded in the worker
  through Celery's task signals (installed by ``taskfleet.workers.hooks``).
* :mod:`~taskfleet.observability.fleet`: gauges read from Redis at scrape time (queues, dead
  letters, persister lag, breakers, autoscaler, heartbeats).
* :mod:`~taskfleet.observability.readiness`: what ``/readyz`` and ``taskfleet health`` check.
* :mod:`~taskfleet.observability.alert_rules` (rules as data and as PromQL),
  :mod:`~taskfleet.observability.alerting` (one evaluation fleet-wide, state in Redis),
  :mod:`~taskfleet.observability.alert_notify` (log and webhook),
  :mod:`~taskfleet.observability.alert_tasks` (the beat task).
* :mod:`~taskfleet.observability.server`: the HTTP endpoint (``/metrics``, ``/healthz``,
  ``/readyz``).

Importing any of them registers nothing and starts nothing.
"""
