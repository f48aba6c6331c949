"""One alert evaluation fleet-wide: lock, gate, read the fleet gauges, decide, notify.

State lives in Redis under ``taskfleet:alerts:``, so whichever worker runs the beat task
continues where the last left off:

* ``lock`` / ``gate`` -- as the autoscaler's: one evaluation at a time, and at most one
  decision per interval even if two beats run by mistake.
* ``pending:<rule>|<series>`` -- when the series first breached (``SET NX``); it expires
  ``for_s`` plus a few intervals after the last breach, so a stale breach is forgotten.
* ``firing`` -- a hash ``<rule>|<series>`` -> the firing message. ``HSETNX`` decides the one
  firing message of an episode, ``HDEL`` the one resolve; it expires after
  ``TASKFLEET_ALERT_STATE_TTL_S`` without an evaluation.
* ``growth:<rule>|<series>`` -- a sorted set of recent values (``growth_s`` rules; a ratio
  keeps its ``numerator`` and ``denominator``).

The error rate reads the job counters of the worker metric files (``job_metrics``); without
them its rule is skipped.

A rule whose metric could not be read this tick is skipped: it neither fires nor resolves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Final

import redis
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from redis.exceptions import LockError

from taskfleet.observability.alert_rules import Rule, Sample, rule_values
from taskfleet.observability.fleet import SOURCES, FleetSources

log = logging.getLogger(__name__)
KEY_PREFIX: Final = "taskfleet:alerts:"
#: Fraction of an interval during which a second decision is refused.
GATE_FRACTION: Final = 0.8
#: The lock, and a pending breach, outlive this many intervals without an evaluation.
STALE_INTERVALS: Final = 3.0
MIN_LOCK_S: Final = 10.0
TRANSIENT_FAULTS: Final = (redis.RedisError, OSError, TimeoutError)
#: Receives each firing or resolve message (the log, the webhook).
Notify = Callable[[dict[str, Any]], None]


def read_samples(
    sources: FleetSources, job_metrics: Collector | None = None
) -> tuple[list[Sample], set[str]]:
    """Every fleet gauge sample (and job metric, with ``job_metrics``), and the names of the
    metrics that could be read (a counter under its name and its ``_total``)."""
    readers: dict[str, Callable[[], Iterable[Metric]]] = {
        name: functools.partial(source, sources) for name, source in SOURCES.items()
    }
    if job_metrics is not None:
        readers["jobs"] = job_metrics.collect
    samples: list[Sample] = []
    read: set[str] = set()
    for name, reader in readers.items():
        try:
            families: list[Metric] = list(reader())
        except TRANSIENT_FAULTS as exc:
            log.warning("alerts: %s unreadable, its rules skipped: %s", name, exc)
            continue
        for family in families:
            read.update({family.name, f"{family.name}_total"})
            samples.extend((s.name, s.labels, s.value) for s in family.samples)
    return samples, read


class AlertEvaluator:
    """Evaluates rules against the fleet gauges, keeping episode state in ``client``."""

    def __init__(
        self,
        client: redis.Redis,
        rules: tuple[Rule, ...],
        interval_s: float,
        state_ttl_s: float,
        prefix: str = KEY_PREFIX,
    ) -> None:
        """Bind to the Redis holding the alert state (its keys under ``prefix``);
        ``interval_s`` sizes the lock, the gate and the TTLs."""
        self.client = client
        self.rules = rules
        self.interval_s = interval_s
        self.state_ttl_s = state_ttl_s
        self.lock_key, self.gate_key = prefix + "lock", prefix + "gate"
        self.firing_key = prefix + "firing"
        self.pending_prefix, self.growth_prefix = prefix + "pending:", prefix + "growth:"

    def tick(
        self,
        sources: FleetSources,
        notify: Notify,
        now: float | None = None,
        job_metrics: Collector | None = None,
    ) -> dict[str, Any]:
        """One evaluation under the lock and gate; returns what fired and resolved, or why not.

        ``now`` is the wall-clock time of the tick (tests pass it; default ``time.time()``).
        """
        tick_id = uuid.uuid4().hex[:12]
        timeout = max(MIN_LOCK_S, self.interval_s * STALE_INTERVALS)
        try:
            lock = self.client.lock(self.lock_key, timeout=timeout, blocking=False)
            if not lock.acquire():
                return {"status": "skipped", "reason": "previous evaluation still running"}
        except TRANSIENT_FAULTS as exc:
            log.warning("alerts: evaluation %s skipped, Redis unreachable: %s", tick_id, exc)
            return {"status": "skipped", "reason": f"redis unreachable: {exc}"}
        try:
            gate_ms = max(1, int(self.interval_s * GATE_FRACTION * 1000))
            if not self.client.set(self.gate_key, tick_id, nx=True, px=gate_ms):
                return {"status": "skipped", "reason": "evaluated less than an interval ago"}
            samples, read = read_samples(sources, job_metrics)
            return self.evaluate(samples, read, notify, now if now is not None else time.time())
        except TRANSIENT_FAULTS as exc:
            log.warning("alerts: evaluation %s failed, Redis unreachable: %s", tick_id, exc)
            return {"status": "skipped", "reason": str(exc)}
        finally:
            with contextlib.suppress(LockError, *TRANSIENT_FAULTS):
                lock.release()

    def evaluate(
        self, samples: list[Sample], read: set[str], notify: Notify, now: float
    ) -> dict[str, Any]:
        """Decide every rule whose metric was read; notify each new firing and resolve."""
        firing = [
            k.decode() if isinstance(k, bytes) else str(k)
            for k in self.client.hkeys(self.firing_key)
        ]
        fired: list[str] = []
        resolved: list[str] = []
        for rule in self.rules:
            if rule.metric not in read:
                continue
            values = rule_values(rule, samples)
            if rule.denominator is not None:
                values = self._ratio(rule, samples, now)
            elif rule.growth_s:
                values = {s: self._growth(rule, s, v, now) for s, v in values.items()}
            breaching = {s: v for s, v in values.items() if rule.breaches(v)}
            for series, value in breaching.items():
                if self._held(rule, series, now) and self._fire(rule, series, value, now, notify):
                    fired.append(f"{rule.name}|{series}")
            for series in values.keys() - breaching.keys():
                self.client.delete(f"{self.pending_prefix}{rule.name}|{series}")
            for key in firing:
                name, _, series = key.partition("|")
                ended = name == rule.name and series not in breaching
                if ended and self.client.hdel(self.firing_key, key):
                    resolved.append(key)
                    notify(_message("resolved", rule, series, values.get(series), now))
        self.client.expire(self.firing_key, int(self.state_ttl_s))
        return {"status": "evaluated", "at": now, "fired": fired, "resolved": resolved}

    def _held(self, rule: Rule, series: str, now: float) -> bool:
        """Whether ``series`` has breached for ``rule.for_s`` (recording its first breach)."""
        key = f"{self.pending_prefix}{rule.name}|{series}"
        ttl = max(1, int(rule.for_s + self.interval_s * STALE_INTERVALS))
        self.client.set(key, repr(now), nx=True, ex=ttl)
        self.client.expire(key, ttl)
        since = float(self.client.get(key) or now)
        return now - since >= rule.for_s

    def _fire(self, rule: Rule, series: str, value: float, now: float, notify: Notify) -> bool:
        message = _message("firing", rule, series, value, now)
        if not self.client.hsetnx(self.firing_key, f"{rule.name}|{series}", repr(now)):
            return False
        notify(message)
        return True

    def _ratio(self, rule: Rule, samples: list[Sample], now: float) -> dict[str, float]:
        """The growth of ``metric{match}`` over that of ``metric{denominator}`` (0 if none)."""
        below = dataclasses.replace(rule, match=rule.denominator or {}, denominator=None)
        above = self._growth(rule, "numerator", sum(rule_values(rule, samples).values()), now)
        total = self._growth(rule, "denominator", sum(rule_values(below, samples).values()), now)
        return {"": above / total if total > 0 else 0.0}

    def _growth(self, rule: Rule, series: str, value: float, now: float) -> float:
        """The increase of ``series`` over the last ``growth_s`` (0 for its first value)."""
        key = f"{self.growth_prefix}{rule.name}|{series}"
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(key, {f"{now!r}:{value!r}": now})
        pipe.zremrangebyscore(key, "-inf", now - rule.growth_s)
        pipe.zrange(key, 0, 0)
        pipe.expire(key, max(1, int(rule.growth_s * 2)))
        oldest = pipe.execute()[2]
        return value - float(oldest[0].decode().partition(":")[2]) if oldest else 0.0


def _message(
    status: str, rule: Rule, series: str, value: float | None, now: float
) -> dict[str, Any]:
    labels = dict(part.split("=", 1) for part in series.split(",") if part)
    return {
        "status": status,
        "alert": rule.name,
        "labels": labels,
        "value": value,
        "threshold": rule.threshold,
        "severity": rule.severity,
        "summary": rule.summary,
        "at": now,
    }
