"""An alert firing and resolving on a real backlog in real Redis, sent to the log and to a
webhook receiver on loopback (opened by ``TASKFLEET_OUTBOUND_ALLOW``).

The queues and the alert state's keys are the test's own; the clock is injected, so "for T
seconds" takes no wall time. Evaluations run through the lock and the gate with a short
interval; each is waited for with a deadline.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from taskfleet.app_config import create_app
from taskfleet.config import load_settings
from taskfleet.config.alerts import load_alert_settings
from taskfleet.config.exposure import get_exposure_settings
from taskfleet.observability.alert_notify import WebhookNotifier
from taskfleet.observability.alert_rules import DEFAULT_RULES, Rule, Sample
from taskfleet.observability.alert_tasks import evaluate_alerts
from taskfleet.observability.alerting import KEY_PREFIX, AlertEvaluator, Notify
from taskfleet.observability.fleet import FleetSources
from taskfleet.routing.depth import redis_priority_key
from taskfleet.routing.topology import Topology
from tests.support.waiting import POLL_INTERVAL_S

LOOPBACK = "127.0.0.1"
BACKLOG, THRESHOLD, FOR_S = 8, 5, 30.0
#: Short, so the gate lets the next evaluation through within milliseconds.
INTERVAL_S = 0.05
TICK_DEADLINE_S = 5.0
T0 = 1_000_000.0
GROWTH_S = 900.0


class Receiver(BaseHTTPRequestHandler):
    """Records each JSON body POSTed to it."""

    received: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append(json.loads(body))  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


def evaluate(
    evaluator: AlertEvaluator, sources: FleetSources, notifier: Notify, now: float
) -> dict[str, Any]:
    """One evaluation at ``now``, retried until the gate lets it through (with a deadline)."""
    deadline = time.monotonic() + TICK_DEADLINE_S
    result: dict[str, Any] = {}
    while time.monotonic() < deadline:
        result = evaluator.tick(sources, notifier, now=now)
        if result["status"] == "evaluated":
            return result
        time.sleep(POLL_INTERVAL_S)
    raise AssertionError(f"no evaluation at {now} within {TICK_DEADLINE_S}s: {result}")


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A receiver on a free loopback port, and the outbound allowlist opened for it."""
    server = HTTPServer((LOOPBACK, 0), Receiver)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("TASKFLEET_OUTBOUND_ALLOW", LOOPBACK)
    get_exposure_settings.cache_clear()
    yield f"http://{LOOPBACK}:{server.server_port}/hook", server.received  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()
    get_exposure_settings.cache_clear()


def test_a_backlog_alert_fires_once_and_resolves_once(
    redis_client: redis.Redis,
    webhook: tuple[str, list[dict[str, Any]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Eight messages on the test's queue breach "depth > 5 for 30 s": nothing at 0 s or
    20 s, one firing at 30 s, none again at 40 s; drained, one resolve, then silence. The
    log and the webhook each get exactly those two messages."""
    url, received = webhook
    tag = uuid.uuid4().hex[:8]
    cpu, io = f"alr-{tag}-cpu", f"alr-{tag}-io"
    settings = load_settings(cpu_queue=cpu, io_queue=io)
    sources = FleetSources(settings, redis_client, redis_client)
    rule = Rule("Backlog", "taskfleet_queue_depth", THRESHOLD, by=("queue",), agg="sum",
                for_s=FOR_S)  # fmt: skip
    prefix = f"test:alerts:{tag}:"
    evaluator = AlertEvaluator(redis_client, (rule,), INTERVAL_S, 60.0, prefix=prefix)
    notifier = WebhookNotifier(url, 5.0)
    envelopes = [json.dumps({"properties": {"delivery_tag": f"{tag}-{n}"}}) for n in range(BACKLOG)]
    redis_client.lpush(redis_priority_key(cpu, 0), *envelopes)

    def tick(at: float) -> dict[str, Any]:
        return evaluate(evaluator, sources, notifier, T0 + at)

    caplog.set_level(logging.INFO, logger="taskfleet.observability.alert_notify")
    try:
        assert tick(0)["fired"] == []
        assert tick(20)["fired"] == []
        assert tick(FOR_S)["fired"] == [f"Backlog|queue={cpu}"]
        assert tick(FOR_S + 10) == unchanged(FOR_S + 10)
        redis_client.delete(redis_priority_key(cpu, 0))
        assert tick(FOR_S + 20)["resolved"] == [f"Backlog|queue={cpu}"]
        assert tick(FOR_S + 30)["resolved"] == []
    finally:
        notifier.close()
        redis_client.delete(redis_priority_key(cpu, 0))
        for key in redis_client.scan_iter(f"{prefix}*"):
            redis_client.delete(key)
    assert [(m["status"], m["alert"], m["labels"]) for m in received] == [
        ("firing", "Backlog", {"queue": cpu}),
        ("resolved", "Backlog", {"queue": cpu}),
    ]
    assert received[0]["value"] == BACKLOG
    assert received[1]["value"] == 0
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("alert ")]
    assert len(logged) == 2
    assert logged[0].startswith(f"alert firing Backlog {{'queue': '{cpu}'}} value={BACKLOG}")
    assert logged[1].startswith("alert resolved Backlog")


def unchanged(at: float) -> dict[str, Any]:
    """An evaluation at ``T0 + at`` that changed nothing."""
    return {"status": "evaluated", "at": T0 + at, "fired": [], "resolved": []}


def test_the_webhook_is_refused_on_loopback_without_the_allowlist(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ``TASKFLEET_OUTBOUND_ALLOW`` the outbound client refuses 127.0.0.1: the
    message is still logged, and the failure is logged, not raised."""
    monkeypatch.delenv("TASKFLEET_OUTBOUND_ALLOW", raising=False)
    get_exposure_settings.cache_clear()
    notifier = WebhookNotifier(f"http://{LOOPBACK}:9/hook", 1.0)
    message = {"status": "firing", "alert": "A", "labels": {}, "value": 1, "threshold": 0,
               "summary": "s"}  # fmt: skip
    try:
        with caplog.at_level(logging.INFO, logger="taskfleet.observability.alert_notify"):
            notifier(message)
    finally:
        notifier.close()
        get_exposure_settings.cache_clear()
    text = caplog.text
    assert "alert firing A" in text
    assert "webhook failed" in text
    assert "refused" in text


def test_dead_letters_growing_fire_at_once_and_resolve_when_the_window_passes(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A growth rule compares with the oldest value inside its window: two new dead letters
    fire at once (no ``for``); a window later, with no new ones, it resolves."""
    tag = uuid.uuid4().hex[:8]
    settings = load_settings(cpu_queue=f"alr-{tag}-cpu", io_queue=f"alr-{tag}-io")
    dlq = Topology.from_settings(settings).dlq_for(settings.cpu_queue)
    sources = FleetSources(settings, redis_client, redis_client)
    rule = Rule("DeadLetters", "taskfleet_dead_letters", 0, growth_s=GROWTH_S)
    prefix = f"test:alerts:{tag}:"
    evaluator = AlertEvaluator(redis_client, (rule,), INTERVAL_S, 60.0, prefix=prefix)
    notifier = WebhookNotifier(None, 1.0)
    series = f"DeadLetters|queue={dlq}"
    try:
        assert evaluate(evaluator, sources, notifier, T0)["fired"] == []
        redis_client.lpush(dlq, "a", "b")
        assert evaluate(evaluator, sources, notifier, T0 + 10)["fired"] == [series]
        assert evaluate(evaluator, sources, notifier, T0 + 20)["fired"] == []
        later = evaluate(evaluator, sources, notifier, T0 + 10 + GROWTH_S + 1)
        assert later["resolved"] == [series]
    finally:
        redis_client.delete(dlq)
        for key in redis_client.scan_iter(f"{prefix}*"):
            redis_client.delete(key)


def test_the_error_rate_fires_on_failures_in_its_window_and_resolves_after(
    redis_client: redis.Redis,
) -> None:
    """The shipped error-rate rule (with ``for`` 0): 10 of 100 new jobs failed is 10% > 5%,
    fires; a window later with no new jobs the rate is 0, resolves. Job counters injected as
    the worker metric files would give them."""
    (shipped,) = [r for r in DEFAULT_RULES if r.name == "TaskfleetErrorRate"]
    rule = dataclasses.replace(shipped, for_s=0.0)
    prefix = f"test:alerts:{uuid.uuid4().hex[:8]}:"
    evaluator = AlertEvaluator(redis_client, (rule,), INTERVAL_S, 60.0, prefix=prefix)
    notifier = WebhookNotifier(None, 1.0)
    read = {"taskfleet_jobs", "taskfleet_jobs_total"}

    def jobs(succeeded: float, failed: float) -> list[Sample]:
        return [
            ("taskfleet_jobs_total", {"kind": "cpu.noop", "state": "succeeded"}, succeeded),
            ("taskfleet_jobs_total", {"kind": "cpu.noop", "state": "failed"}, failed),
        ]

    try:
        assert evaluator.evaluate(jobs(100, 0), read, notifier, T0)["fired"] == []
        assert evaluator.evaluate(jobs(190, 10), read, notifier, T0 + 60)["fired"] == [
            "TaskfleetErrorRate|"
        ]
        after = evaluator.evaluate(jobs(190, 10), read, notifier, T0 + 60 + rule.growth_s + 1)
        assert after["resolved"] == ["TaskfleetErrorRate|"]
        assert evaluator.evaluate([], set(), notifier, T0 + 9999)["resolved"] == []
    finally:
        for key in redis_client.scan_iter(f"{prefix}*"):
            redis_client.delete(key)


def test_the_beat_tasks_evaluation_reads_the_apps_queues_and_logs(
    redis_client: redis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``evaluate_alerts`` (the body of ``observability.alert_tick``) builds the sources from
    the app's settings and the rules from ``TASKFLEET_ALERT_RULES_FILE``: a rule on the app's
    own queue fires into the log."""
    tag = uuid.uuid4().hex[:8]
    settings = load_settings(cpu_queue=f"alr-{tag}-cpu", io_queue=f"alr-{tag}-io")
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([{"name": f"Any{tag}", "metric": "taskfleet_queue_depth",
                                  "threshold": 0, "by": ["queue"], "agg": "sum"}]))  # fmt: skip
    alerts = load_alert_settings(rules_file=rules, interval_s=INTERVAL_S, webhook_url=None)
    app = create_app(settings)
    redis_client.lpush(settings.cpu_queue, json.dumps({"properties": {"delivery_tag": tag}}))
    series = f"Any{tag}|queue={settings.cpu_queue}"
    caplog.set_level(logging.INFO, logger="taskfleet.observability.alert_notify")
    try:
        result: dict[str, Any] = {}
        deadline = time.monotonic() + TICK_DEADLINE_S
        while time.monotonic() < deadline and result.get("status") != "evaluated":
            result = evaluate_alerts(app, alerts, redis_client)
            time.sleep(POLL_INTERVAL_S)
        assert result["fired"] == [series], result
        assert f"alert firing Any{tag}" in caplog.text
    finally:
        redis_client.delete(settings.cpu_queue)
        redis_client.hdel(f"{KEY_PREFIX}firing", series)
        for key in redis_client.scan_iter(f"{KEY_PREFIX}*{tag}*"):
            redis_client.delete(key)
        app.close()
