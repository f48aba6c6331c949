"""Alert rules as data: the shipped set, a rules file, their values and their PromQL.

A rule reads one metric of the fleet gauges (:mod:`taskfleet.observability.fleet`, the same
families ``/metrics`` serves), optionally filtered by labels and aggregated by some of them,
and compares each resulting series with a threshold. ``growth_s`` compares the increase over
that window instead of the value (dead letters growing); with ``denominator``, the ratio of
two growths (the error rate). A series breaching for ``for_s``
seconds fires. :func:`promql` writes the same rule as a Prometheus expression, and
``tests/unit/test_alert_rules.py`` checks that ``deploy/observability/prometheus-alerts.yaml``
holds exactly these expressions, so the two rule sets cannot drift.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

#: A comparison a rule can make -> the function making it.
OPS: Final[dict[str, Callable[[float, float], bool]]] = {
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
}
AGGREGATIONS: Final[dict[str, Callable[[Iterable[float]], float]]] = {"sum": sum, "max": max}
SECONDS_PER_MINUTE: Final = 60
#: One metric sample: name, labels, value.
Sample = tuple[str, Mapping[str, str], float]


@dataclass(frozen=True)
class Rule:
    """One alert: ``agg by (by) (metric{match})`` (or its growth over ``growth_s``) ``op``
    ``threshold`` for ``for_s`` seconds."""

    name: str
    metric: str
    threshold: float
    op: str = ">"
    by: tuple[str, ...] = ()
    agg: str | None = None
    match: Mapping[str, str] = field(default_factory=dict)
    for_s: float = 0.0
    growth_s: float = 0.0
    #: Set: the value is the growth of ``metric{match}`` over the growth of
    #: ``metric{denominator}`` (both summed over every series, e.g. failed / all jobs).
    denominator: Mapping[str, str] | None = None
    severity: str = "warning"
    summary: str = ""

    def __post_init__(self) -> None:
        """Refuse an unknown comparison or aggregation, or labels grouped without one."""
        if self.op not in OPS:
            raise ValueError(f"rule {self.name}: op must be one of {sorted(OPS)}")
        if self.agg is not None and self.agg not in AGGREGATIONS:
            raise ValueError(f"rule {self.name}: agg must be one of {sorted(AGGREGATIONS)}")
        if self.by and self.agg is None:
            raise ValueError(f"rule {self.name}: 'by' needs an 'agg'")
        if self.denominator is not None and not (self.growth_s and self.agg == "sum"):
            raise ValueError(f"rule {self.name}: a ratio needs growth_s and agg 'sum'")

    def breaches(self, value: float) -> bool:
        """Whether ``value`` is past the threshold."""
        return OPS[self.op](value, self.threshold)


#: Alerts only the Prometheus file has: a scrape error is Prometheus's view of the endpoint.
PROMETHEUS_ONLY: Final = frozenset({"TaskfleetMetricsSourceDown"})
DEFAULT_RULES: Final[tuple[Rule, ...]] = (
    Rule("TaskfleetQueueBacklog", "taskfleet_queue_depth", 1000, by=("queue",), agg="sum",
         for_s=300, summary="jobs waiting on a queue"),
    Rule("TaskfleetOldestJobTooOld", "taskfleet_queue_oldest_age_seconds", 600,
         by=("queue",), agg="max", for_s=120, summary="seconds the oldest job has waited"),
    Rule("TaskfleetDeadLettersGrowing", "taskfleet_dead_letters", 0, growth_s=900,
         summary="new dead letters in the window"),
    Rule("TaskfleetBreakerOpen", "taskfleet_breaker_state", 2, op="==", for_s=60,
         summary="a circuit breaker is open"),
    Rule("TaskfleetNoLiveWorker", "taskfleet_worker_heartbeats", 0, op="==",
         match={"state": "live"}, for_s=60, severity="critical",
         summary="no worker process has a live heartbeat"),
    Rule("TaskfleetPersisterLag", "taskfleet_persist_lag_seconds", 120, for_s=300,
         summary="seconds results wait to reach Postgres"),
    Rule("TaskfleetErrorRate", "taskfleet_jobs_total", 0.05, agg="sum",
         match={"state": "failed"}, denominator={}, growth_s=300, for_s=600,
         summary="fraction of jobs that failed in the window"),
)  # fmt: skip


def load_rules(path: Path | None) -> tuple[Rule, ...]:
    """The rules of the JSON file at ``path`` (a list of :class:`Rule` fields), else the
    shipped ones.

    Raises:
        ValueError: the file is not a list of valid rules (names the rule).
    """
    if path is None:
        return DEFAULT_RULES
    entries = json.loads(path.read_text())
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of rules")
    return tuple(
        Rule(**{**entry, "by": tuple(entry.get("by", ())), "match": dict(entry.get("match", {}))})
        for entry in entries
    )


def _selector(metric: str, labels: Mapping[str, str]) -> str:
    matchers = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{metric}{{{matchers}}}" if matchers else metric


def series_name(labels: Mapping[str, str]) -> str:
    """A series' identity: its labels as ``a=x,b=y`` (sorted; empty for none)."""
    return ",".join(f"{key}={labels[key]}" for key in sorted(labels))


def rule_values(rule: Rule, samples: Iterable[Sample]) -> dict[str, float]:
    """The value of each series ``rule`` reads (before any growth window), by series name."""
    groups: dict[str, list[float]] = {}
    for name, labels, value in samples:
        if name != rule.metric or any(labels.get(k) != v for k, v in rule.match.items()):
            continue
        kept = {k: labels.get(k, "") for k in rule.by} if rule.agg else dict(labels)
        groups.setdefault(series_name(kept), []).append(value)
    aggregate = AGGREGATIONS[rule.agg] if rule.agg else (lambda values: list(values)[-1])
    return {series: aggregate(values) for series, values in groups.items()}


def _duration(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // SECONDS_PER_MINUTE}m" if whole % SECONDS_PER_MINUTE == 0 else f"{whole}s"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def promql(rule: Rule) -> str:
    """The Prometheus expression of ``rule`` (as written in the shipped rules file)."""
    selector = _selector(rule.metric, rule.match)
    if rule.denominator is not None:
        window = _duration(rule.growth_s)
        below = _selector(rule.metric, rule.denominator)
        return (
            f"sum(rate({selector}[{window}])) / "
            f"clamp_min(sum(rate({below}[{window}])), 1e-9) {rule.op} {_number(rule.threshold)}"
        )
    inner = f"delta({selector}[{_duration(rule.growth_s)}])" if rule.growth_s else selector
    if rule.agg:
        inner = f"{rule.agg} by ({', '.join(rule.by)}) ({inner})"
    return f"{inner} {rule.op} {_number(rule.threshold)}"


def prometheus_for(rule: Rule) -> str | None:
    """The rule's ``for:`` in the Prometheus file (None when it fires at once)."""
    return _duration(rule.for_s) if rule.for_s else None
