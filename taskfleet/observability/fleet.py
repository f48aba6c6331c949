"""Gauges of the whole fleet, read from Redis when ``/metrics`` is scraped.

Queue levels, dead letters, the persistence stream, breakers, the autoscaler's published
decision and measurements (capacity figures) and the workers' heartbeats all live in Redis already, so any process on any host
reads the same values: they are computed at scrape time (one pipelined read of each kind)
and reused for ``TASKFLEET_METRICS_CACHE_S``, so several scrapers cost one read. A read that
fails leaves its gauges out and sets ``taskfleet_scrape_error{source}`` to 1.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from taskfleet.config import Settings
from taskfleet.config.cache import load_cache_settings
from taskfleet.observability.capacity import capacity_gauges
from taskfleet.observability.queues import dead_letter_depths, read_levels
from taskfleet.results.backlog import stream_health
from taskfleet.results.stream import PERSIST_GROUP, PERSIST_STREAM
from taskfleet.routing.owners import alive_key, registry_key
from taskfleet.routing.topology import Topology
from taskfleet.scheduler.store import AutoscaleStore

BREAKER_PREFIX: Final = "taskfleet:breaker:"
#: Keys under the breaker prefix that are not breakers (window hashes, the event channel).
BREAKER_NOT_STATE: Final = (":w", "events")
#: A breaker state -> the gauge value (what alerting rules compare against).
BREAKER_STATES: Final[dict[str, float]] = {"closed": 0.0, "half_open": 1.0, "open": 2.0}
UNKNOWN_BREAKER_STATE: Final = -1.0
#: The breaker hash's call counters (``n_<name>``, written by ``breaker.lua``).
BREAKER_CALL_COUNTERS: Final = ("allowed", "rejected", "successes", "failures")
SCAN_COUNT: Final = 500
#: How often the breaker names are looked for again (a new breaker shows within this).
BREAKER_RESCAN_S: Final = 60.0
#: kombu's default name of the Redis transport's unacked hash.
DEFAULT_UNACKED_KEY: Final = "unacked"
#: The store's interval only sizes its lock and gate, which a reader never takes.
AUTOSCALE_INTERVAL_UNUSED_S: Final = 1.0


@dataclass
class FleetSources:
    """Where the fleet gauges come from."""

    settings: Settings
    results: redis.Redis
    broker: redis.Redis | None  # None on RabbitMQ: queue gauges are then left out
    #: kombu's unacked hash on the broker; the heartbeat registry is named after it.
    unacked_key: str = DEFAULT_UNACKED_KEY
    _breakers: list[str] = field(default_factory=list)
    _breakers_at: float = float("-inf")

    def breaker_names(self) -> list[str]:
        """The breakers in Redis, found by a SCAN at most every ``BREAKER_RESCAN_S``.

        A SCAN walks the whole keyspace (millions of result keys on a busy fleet), so names
        are looked for rarely; a breaker's state is read on every scrape.
        """
        if time.monotonic() - self._breakers_at >= BREAKER_RESCAN_S:
            self._breakers = sorted(
                key.decode()[len(BREAKER_PREFIX) :]
                for key in self.results.scan_iter(f"{BREAKER_PREFIX}*", count=SCAN_COUNT)
                if not key.decode().endswith(BREAKER_NOT_STATE)
            )
            self._breakers_at = time.monotonic()
        return self._breakers

    @property
    def broker_or_redis(self) -> redis.Redis:
        """The broker's Redis (where worker heartbeats are), else the results Redis."""
        return self.broker if self.broker is not None else self.results

    @property
    def queues(self) -> list[str]:
        """The pools' work queues."""
        return [self.settings.cpu_queue, self.settings.io_queue]

    @property
    def dlqs(self) -> list[str]:
        """The pools' dead-letter queues."""
        topology = Topology.from_settings(self.settings)
        return [topology.dlq_for(q) for q in self.queues]


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels or [])


def queue_gauges(src: FleetSources) -> Iterator[Metric]:
    """Depth and oldest-job age per queue and priority, dead letters per queue."""
    if src.broker is None:
        return
    depth = _gauge("taskfleet_queue_depth", "Jobs waiting", ["queue", "priority"])
    age = _gauge("taskfleet_queue_oldest_age_seconds", "Oldest waiting job", ["queue", "priority"])
    for level in read_levels(src.broker, src.queues):
        depth.add_metric([level.queue, str(level.priority)], level.depth)
        age.add_metric([level.queue, str(level.priority)], level.oldest_age_s)
    dead = _gauge("taskfleet_dead_letters", "Dead letters waiting", ["queue"])
    for dlq, size in dead_letter_depths(src.broker, src.dlqs).items():
        dead.add_metric([dlq], size)
    yield from (depth, age, dead)


def persister_gauges(src: FleetSources) -> Iterator[Metric]:
    """The persistence stream: length, pending, oldest entry and oldest pending age."""
    maxlen = load_cache_settings().persist_stream_maxlen
    health = stream_health(src.results, PERSIST_STREAM, PERSIST_GROUP, maxlen)
    yield GaugeMetricFamily(
        "taskfleet_persist_stream_length", "Results not yet in Postgres", value=health.length
    )
    yield GaugeMetricFamily(
        "taskfleet_persist_pending", "Results read, not yet written", value=health.pending
    )
    yield GaugeMetricFamily(
        "taskfleet_persist_lag_seconds",
        "Age of the oldest result not yet in Postgres",
        value=health.oldest_entry_age_s or 0.0,
    )


def breaker_gauges(src: FleetSources) -> Iterator[Metric]:
    """Each breaker's fleet-wide state (0 closed, 1 half-open, 2 open, -1 unknown) and its
    fleet-wide counters (calls allowed, rejected, succeeded, failed; times opened)."""
    names = src.breaker_names()
    pipe = src.results.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(BREAKER_PREFIX + name)
    state = _gauge("taskfleet_breaker_state", "0 closed, 1 half-open, 2 open", ["breaker"])
    calls = CounterMetricFamily(
        "taskfleet_breaker_calls",
        "Calls through a breaker, fleet-wide",
        labels=["breaker", "outcome"],
    )
    opened = CounterMetricFamily(
        "taskfleet_breaker_opened", "Times a breaker opened, fleet-wide", labels=["breaker"]
    )
    for name, raw in zip(names, pipe.execute(), strict=True):
        data = {k.decode(): v.decode() for k, v in raw.items()}
        state.add_metric(
            [name], BREAKER_STATES.get(data.get("state", "closed"), UNKNOWN_BREAKER_STATE)
        )
        for outcome in BREAKER_CALL_COUNTERS:
            calls.add_metric([name, outcome], float(data.get(f"n_{outcome}", 0)))
        opened.add_metric([name], float(data.get("n_opened", 0)))
    yield from (state, calls, opened)


def autoscale_gauges(src: FleetSources) -> Iterator[Metric]:
    """The autoscaler's desired hosts per pool and the prefork processes it last set."""
    store = AutoscaleStore(src.results, AUTOSCALE_INTERVAL_UNUSED_S)
    replicas = _gauge("taskfleet_autoscale_desired_replicas", "Desired hosts", ["pool"])
    for pool, count in store.replicas().items():
        replicas.add_metric([pool], count)
    yield replicas
    yield GaugeMetricFamily(
        "taskfleet_autoscale_prefork_processes",
        "Prefork pool processes the autoscaler last set, summed over workers",
        value=sum(size for _, size in store.prefork_sizes().values()),
    )


def heartbeat_gauges(src: FleetSources) -> Iterator[Metric]:
    """Worker processes whose heartbeat is live, and those registered but silent."""
    client = src.broker_or_redis
    owners: list[str] = [
        member.decode() if isinstance(member, bytes) else str(member)
        for member in client.zrange(registry_key(src.unacked_key), 0, -1)
    ]
    pipe = client.pipeline(transaction=False)
    for owner in owners:
        pipe.exists(alive_key(owner))
    live = sum(1 for found in pipe.execute() if found) if owners else 0
    beats = _gauge("taskfleet_worker_heartbeats", "Worker processes by heartbeat", ["state"])
    beats.add_metric(["live"], live)
    beats.add_metric(["silent"], len(owners) - live)
    yield beats


#: Each source of gauges, by the name ``taskfleet_scrape_error`` reports it under.
SOURCES: Final[dict[str, Callable[[FleetSources], Iterator[Metric]]]] = {
    "queues": queue_gauges,
    "persister": persister_gauges,
    "breakers": breaker_gauges,
    "autoscaler": autoscale_gauges,
    "heartbeats": heartbeat_gauges,
    "capacity": capacity_gauges,
}


class FleetCollector(Collector):
    """A collector of the fleet gauges, cached for ``cache_s`` between scrapes."""

    def __init__(self, sources: FleetSources, cache_s: float) -> None:
        self.sources = sources
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._at = float("-inf")
        self._cached: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        """The gauges, read again when the cached ones are older than ``cache_s``."""
        with self._lock:
            if time.monotonic() - self._at >= self.cache_s:
                self._cached = self._read()
                self._at = time.monotonic()
            yield from self._cached

    def _read(self) -> list[Metric]:
        found: list[Metric] = []
        errors = _gauge("taskfleet_scrape_error", "1 when a source could not be read", ["source"])
        for name, source in SOURCES.items():
            try:
                found.extend(source(self.sources))
                errors.add_metric([name], 0)
            except (redis.RedisError, OSError):
                errors.add_metric([name], 1)
        return [*found, errors]
