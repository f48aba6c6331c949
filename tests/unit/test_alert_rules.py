"""Alert rules: the shipped set agrees with the Prometheus file; values, files, schedule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from taskfleet.config.alerts import ALERT_TASK, alert_schedule, load_alert_settings
from taskfleet.observability.alert_rules import (
    DEFAULT_RULES,
    PROMETHEUS_ONLY,
    Rule,
    load_rules,
    prometheus_for,
    promql,
    rule_values,
)

PROMETHEUS_FILE = (
    Path(__file__).resolve().parents[2] / "deploy" / "observability" / "prometheus-alerts.yaml"
)


def test_shipped_rules_and_the_prometheus_file_name_the_same_alerts() -> None:
    """Every evaluated rule is in the file with the same expression and ``for``; the file's
    other alerts are exactly the documented Prometheus-only ones."""
    rules = yaml.safe_load(PROMETHEUS_FILE.read_text())["groups"][0]["rules"]
    in_file = {entry["alert"]: entry for entry in rules}
    for rule in DEFAULT_RULES:
        entry = in_file[rule.name]
        assert " ".join(entry["expr"].split()) == promql(rule), rule.name
        assert entry.get("for") == prometheus_for(rule), rule.name
        assert entry["labels"]["severity"] == rule.severity, rule.name
    assert set(in_file) - {rule.name for rule in DEFAULT_RULES} == PROMETHEUS_ONLY


def test_rule_values_filter_aggregate_and_keep_raw_series() -> None:
    """``by`` + ``agg`` group series; ``match`` filters; without ``agg`` each series stands."""
    samples = [
        ("taskfleet_queue_depth", {"queue": "cpu", "priority": "0"}, 3.0),
        ("taskfleet_queue_depth", {"queue": "cpu", "priority": "9"}, 4.0),
        ("taskfleet_queue_depth", {"queue": "io", "priority": "0"}, 1.0),
        ("taskfleet_worker_heartbeats", {"state": "live"}, 0.0),
        ("taskfleet_worker_heartbeats", {"state": "silent"}, 2.0),
    ]
    backlog = Rule("B", "taskfleet_queue_depth", 5, by=("queue",), agg="sum")
    assert rule_values(backlog, samples) == {"queue=cpu": 7.0, "queue=io": 1.0}
    assert [backlog.breaches(v) for v in (7.0, 5.0)] == [True, False]
    live = Rule("L", "taskfleet_worker_heartbeats", 0, op="==", match={"state": "live"})
    assert rule_values(live, samples) == {"state=live": 0.0}
    assert promql(live) == 'taskfleet_worker_heartbeats{state="live"} == 0'


def test_a_rules_file_replaces_the_shipped_rules_and_bad_rules_are_refused(
    tmp_path: Path,
) -> None:
    """A JSON list of rule fields loads; an unknown op or a ``by`` without ``agg`` does not."""
    path = tmp_path / "rules.json"
    path.write_text(json.dumps([{"name": "Deep", "metric": "taskfleet_queue_depth",
                                 "threshold": 10, "by": ["queue"], "agg": "max",
                                 "for_s": 30}]))  # fmt: skip
    (rule,) = load_rules(path)
    assert (rule.name, rule.by, rule.agg, rule.for_s) == ("Deep", ("queue",), "max", 30)
    assert load_rules(None) == DEFAULT_RULES
    with pytest.raises(ValueError, match="op must be"):
        Rule("X", "m", 1, op=">=")
    with pytest.raises(ValueError, match="needs an 'agg'"):
        Rule("X", "m", 1, by=("queue",))


def test_the_alert_schedule_is_off_by_default_and_one_entry_when_on() -> None:
    """Beat runs no evaluation unless enabled; enabled, one entry every interval."""
    assert alert_schedule(load_alert_settings(enabled=False)) == {}
    (entry,) = alert_schedule(load_alert_settings(enabled=True, interval_s=7)).values()
    assert entry["task"] == ALERT_TASK
    assert entry["schedule"] == 7


def test_the_alert_evaluation_sends_no_task_events() -> None:
    """The internal evaluation job stays off Flower's Tasks page."""
    from taskfleet.observability.alert_tasks import alert_tick

    assert alert_tick.send_events is False
