"""W3 latency: offer a fixed rate (default 300 jobs/s for 5 s); publish-to-result percentiles."""

from __future__ import annotations

import contextlib
import gc
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import redis

from bench.common import Summary, percentile
from bench.report import NOT_AVAILABLE, Table, fmt_mib, fmt_ms, fmt_ratio
from bench.services import services
from bench.systems.base import RedisKeySystem, System
from bench.weather import measure
from bench.workloads.base import Options, failure, log, open_system, with_workers

WORKLOAD = "W3"
REFERENCE = "taskfleet"
#: Watcher poll interval: the resolution of every latency figure (a tenth of the 10 ms target).
LATENCY_POLL_S = 0.001
"""Poll period of the result watcher: the resolution of every latency figure."""
WATCH_WINDOW = 200
"""Oldest pending jobs checked per poll (bounds the watcher's own CPU use)."""
DRAIN_AFTER_S = 15.0
"""How long results may keep arriving after the last publish."""
MS = 1000.0
NOTIFY_SETTING = "notify-keyspace-events"
NOTIFY_WAIT_S = 0.05
"""Longest the notified watcher blocks before checking whether to stop."""
EARLY_CAP = 100_000
"""Result writes remembered before their job was added (bounds memory on foreign writes)."""


class _Watcher(threading.Thread):
    """Polls the results of published jobs and records when each became readable.

    The fallback for systems whose results are not Redis keys (``db+postgresql``); its cost
    grows with the backlog, which is why Redis-key systems use :class:`_NotifiedWatcher`.
    """

    def __init__(self, system: System) -> None:
        super().__init__(name="bench-latency-watcher", daemon=True)
        self.system = system
        self.lock = threading.Lock()
        self.pending: dict[Any, float] = {}
        self.latencies: list[float] = []
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def add(self, key: Any, published_at: float) -> None:
        with self.lock:
            self.pending[key] = published_at

    def outstanding(self) -> int:
        with self.lock:
            return len(self.pending)

    def close(self) -> None:
        self.stop_event.set()
        self.join(DRAIN_AFTER_S)

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                with self.lock:
                    items = list(self.pending.items())[:WATCH_WINDOW]
                if items:
                    flags = self.system.done_flags([k for k, _ in items])
                    now = time.perf_counter()
                    with self.lock:
                        for (key, published_at), done in zip(items, flags, strict=True):
                            if done:
                                del self.pending[key]
                                self.latencies.append(now - published_at)
                self.stop_event.wait(LATENCY_POLL_S)
        except BaseException as exc:
            self.error = exc


class _NotifiedWatcher(_Watcher):
    """Told by Redis of every result write (keyspace events), so it costs O(1) per job.

    Redis publishes ``__keyevent@<db>__:<event>`` with the key's name when the write that
    makes the result readable executes; the watcher subscribes to that one channel. A result
    may land before :meth:`add` hears of its job: its time is kept until the job is added.
    The event class is switched on for the run only and restored after.
    """

    def __init__(self, system: RedisKeySystem) -> None:
        super().__init__(system)
        assert system.done_event is not None
        flags, event = system.done_event
        self.redis_system = system
        self.client = redis.Redis.from_url(system.result_url)
        db = self.client.connection_pool.connection_kwargs.get("db", 0)
        self.saved_flags = str(self.client.config_get(NOTIFY_SETTING)[NOTIFY_SETTING])
        self.client.config_set(NOTIFY_SETTING, f"E{flags}")
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(f"__keyevent@{db}__:{event}")
        self.early: dict[bytes, float] = {}

    def add(self, key: Any, published_at: float) -> None:
        name = self.redis_system.result_key(key).encode()
        with self.lock:
            seen_at = self.early.pop(name, None)
            if seen_at is not None:
                self.latencies.append(seen_at - published_at)
            else:
                self.pending[name] = published_at

    def close(self) -> None:
        super().close()
        self.pubsub.close()
        self.client.config_set(NOTIFY_SETTING, self.saved_flags)
        self.client.close()

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                message = self.pubsub.get_message(timeout=NOTIFY_WAIT_S)
                if message is None:
                    continue
                now = time.perf_counter()
                name = message["data"]
                with self.lock:
                    published_at = self.pending.pop(name, None)
                    if published_at is not None:
                        self.latencies.append(now - published_at)
                    elif len(self.early) < EARLY_CAP:
                        self.early[name] = now
        except BaseException as exc:
            self.error = exc


def _watcher_for(system: System) -> _Watcher:
    if isinstance(system, RedisKeySystem) and system.done_event is not None:
        return _NotifiedWatcher(system)
    return _Watcher(system)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection in the harness while it measures (as ``timeit`` does).

    The watcher thread stamps each result's arrival; a full collection in this process
    (measured: 60-70 ms with every peer's client library loaded) would hold the stamp back
    and charge the pause to whichever system is being measured. Reference counting still
    frees almost everything; the cycles wait for the end of the run.
    """
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def _one_run(system: System, rate: float, seconds: float) -> dict[str, Any]:
    total = int(rate * seconds)
    weather = measure(services().redis_url)
    with _collector_paused():
        watcher = _watcher_for(system)
        watcher.start()
        try:
            start = time.perf_counter()
            for index in range(total):
                due = start + index / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)  # pacing to the offered rate, not waiting for a result
                published_at = time.perf_counter()
                watcher.add(system.publish_one(index), published_at)
            publish_s = time.perf_counter() - start
            deadline = time.perf_counter() + DRAIN_AFTER_S
            while watcher.outstanding() and time.perf_counter() < deadline and watcher.is_alive():
                watcher.stop_event.wait(LATENCY_POLL_S * 5)
        finally:
            watcher.close()
    if watcher.error is not None:
        raise watcher.error
    lat = sorted(watcher.latencies)
    if not lat:
        raise RuntimeError("no job finished")
    return {
        "offered": total,
        "finished": len(lat),
        "lost_or_late": total - len(lat),
        "achieved_publish_rate": total / publish_s,
        "p50_ms": percentile(lat, 0.50) * MS,
        "p95_ms": percentile(lat, 0.95) * MS,
        "p99_ms": percentile(lat, 0.99) * MS,
        "peak_rss_bytes": system.peak_rss_bytes(),
        "weather": weather.as_dict(),
    }


def _fmt_weather(runs: list[dict[str, Any]]) -> str:
    loop = statistics.median(r["weather"]["loop_ms"] for r in runs)
    rtt = statistics.median(r["weather"]["redis_rtt_us"] for r in runs)
    return f"{loop:.0f} / {rtt:.0f}"


#: The issue's latency target: p99 publish-to-result under this at ``TARGET_RATE``.
TARGET_RATE = 1000.0
TARGET_P99_MS = 10.0
#: Systems measured again at the target rate (the others saturate far below it).
TARGET_SYSTEMS = (
    "taskfleet",
    "taskfleet_prefork",
    "taskfleet_per_core",
    "celery_redis",
    "dramatiq",
)
#: The taskfleet configurations the verdict names.
TARGET_CONFIGURATIONS = (
    ("taskfleet", "as shipped (`TASKFLEET_CPU_POOL=solo`: 2 solo CPU workers)"),
    ("taskfleet_prefork", "with `TASKFLEET_CPU_POOL=prefork` (one CPU worker of 2 processes)"),
    (
        "taskfleet_per_core",
        "prefork with `TASKFLEET_CPU_WORKERS=2` (2 workers of 1 process)",
    ),
)


def run(options: Options) -> Table:
    """Measure W3 for every selected system that exposes per-job results.

    Args:
        options: CLI options.

    Returns:
        The table.
    """
    rate, seconds = options.latency_rate, options.latency_seconds
    table = Table(
        WORKLOAD,
        f"latency at {rate:,.0f} jobs/s offered for {seconds:g} s, publish to readable result (ms)",
        [
            "system",
            "p50",
            "p95",
            "p99",
            "unfinished",
            "peak worker RSS MiB",
            "host: loop ms / Redis RTT µs",
            "taskfleet p50 ÷ this",
            "taskfleet p99 ÷ this",
        ],
        notes=[
            "One job at a time (`enqueue` / `apply_async` / `send` / `enqueue`), paced to the "
            "offered rate. A result counts as readable when Redis executes the write that "
            "stores it: a watcher thread subscribes to that write's keyspace event (one "
            "message per job, whatever the backlog). Results kept in Postgres are polled "
            f"every {LATENCY_POLL_S * MS:.0f} ms instead. The harness pauses its own cycle "
            "collector while it measures. Ratios below 1 mean taskfleet is faster.",
            "Host: the weather just before each run (`bench/weather.py`), median over the "
            "runs: a fixed pure-Python loop, and a Redis PING round trip. Compare p99s taken "
            "in similar weather only.",
            "Figures are median (min-max) over runs of each run's percentile.",
        ],
    )
    stats: dict[str, dict[str, Summary]] = {}
    cells: dict[str, list[str]] = {}
    for name in options.systems:
        system = open_system(name)
        if isinstance(system, str):
            cells[name] = [name, system, "", "", "", "", ""]
            continue
        if not system.per_job_results:
            cells[name] = [system.label, "n/a: no per-job result", "", "", "", "", ""]
            continue
        runs: list[dict[str, Any]] = []
        try:
            for index in range(options.runs):
                log.info("W3 %s run %d/%d", name, index + 1, options.runs)
                runs.append(
                    with_workers(system, options.procs, lambda s: _one_run(s, rate, seconds))
                )
        except Exception as exc:
            cells[name] = [system.label, failure(name, exc), "", "", "", "", ""]
            table.raw.append({"system": name, "runs": runs, "error": str(exc)})
            continue
        summary = {
            key: Summary.of([r[key] for r in runs])
            for key in ("p50_ms", "p95_ms", "p99_ms", "peak_rss_bytes")
        }
        stats[name] = summary
        unfinished = max(r["lost_or_late"] for r in runs)
        cells[name] = [
            system.label,
            fmt_ms(summary["p50_ms"]),
            fmt_ms(summary["p95_ms"]),
            fmt_ms(summary["p99_ms"]),
            str(unfinished),
            fmt_mib(summary["peak_rss_bytes"]),
            _fmt_weather(runs),
        ]
        table.raw.append(
            {"system": name, **{k: v.as_dict() for k, v in summary.items()}, "runs": runs}
        )
    ours = stats.get(REFERENCE)
    for name in options.systems:
        theirs = stats.get(name)
        ratios = [
            fmt_ratio(ours[key].median if ours else None, theirs[key].median if theirs else None)
            if ours and theirs
            else NOT_AVAILABLE
            for key in ("p50_ms", "p99_ms")
        ]
        table.rows.append([*cells[name], *ratios])
    return table


def run_at_target(options: Options) -> Table | None:
    """W3 again at the issue's target rate, for taskfleet and the fastest peers.

    Returns:
        The table, with the verdict on the p99 target in its notes (None when the main run
        already used that rate or no target system is selected).
    """
    systems = tuple(s for s in options.systems if s in TARGET_SYSTEMS)
    if options.latency_rate == TARGET_RATE or REFERENCE not in systems:
        return None
    table = run(replace(options, latency_rate=TARGET_RATE, systems=systems))
    verdicts = []
    for name, how in TARGET_CONFIGURATIONS:
        ours = next((r for r in table.raw if r.get("system") == name and "p99_ms" in r), None)
        if ours is not None:
            p99 = ours["p99_ms"]["median"]
            mark = "met" if p99 < TARGET_P99_MS else "**missed**"
            verdicts.append(f"{how}: {p99:,.1f} ms, {mark}")
    table.notes.append(
        f"Target (issue 3): taskfleet p99 publish-to-result under {TARGET_P99_MS:.0f} ms at "
        f"{TARGET_RATE:,.0f} jobs/s offered. {'; '.join(verdicts) or NOT_AVAILABLE}. The "
        "publisher, the result watcher, Redis, Postgres and the workers share the same 2 "
        "cores here."
    )
    return table
