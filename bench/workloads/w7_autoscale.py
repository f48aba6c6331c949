"""W7 autoscaler: the same CPU burst against taskfleet's autoscaler and Celery's ``--autoscale``.

Each system starts at ``MIN_PROCS`` CPU processes and may grow to ``MAX_PROCS``:

* ``taskfleet``: taskfleet as shipped -- the default CPU pool (solo: every CPU process is a
  worker of its own), run by a real :class:`taskfleet.fleet.Fleet` supervisor (what
  ``taskfleet up`` runs: one solo CPU worker, one gevent I/O worker, no beat, no Flower, no
  metrics endpoint) on private queues, persister off (``TASKFLEET_NO_PERSISTER=1`` in every
  child's environment). The supervisor registers its solo CPU workers as a slot group in
  Redis; the bench process plays the beat and calls :func:`taskfleet.scheduler.tick.run_tick`
  every ``INTERVAL_S`` seconds, which asks the group for a size, and the supervisor's
  ``SlotScaler`` promotes its standby worker (booted ahead of need), starts further
  ``cpu-worker-N`` processes, or retires the newest (SIGTERM). The standby is a process
  and is counted as one, at idle too.
* ``taskfleet_prefork``: the old default, for comparison: one prefork CPU worker from
  ``cpu_profile(settings with cpu_pool="prefork", MIN_PROCS)`` (acks late, prefetch 1,
  ``-O fair``), persister off, on private queues, resized by remote control from the same
  ticks.
* ``celery``: the stock app of :mod:`bench.systems.celery_autoscale_app` (defaults
  untouched: prefetch multiplier 4, early ack) with ``--autoscale=4,1``; Celery's own
  autoscaler runs inside the worker (keepalive 30 s).
* ``celery_p1``: the same with prefetch 1 and ``-O fair``.

Both taskfleet systems use the same autoscale settings: cpu worker/pool min 1, max 4,
interval 1 s, every other knob at its default: up cooldown 10 s, down cooldown 30 s, step
up 4, step down 1, target backlog 4, inspect timeout 1 s.

All run the same task body (SHA-256 iterated ``ROUNDS`` times, a few ms of CPU). The burst
is ``n`` jobs published at once (taskfleet ``enqueue_many``, Celery an ``apply_async`` loop)
after the autoscalers idled ``IDLE_BEFORE_S``. Measured:

* drain: first publish until the last result is readable in Redis;
* process-seconds: the CPU processes are counted every ``SAMPLE_S`` and integrated over
  time, during the drain and including the tail (sampling continues until the count is back
  to ``MIN_PROCS``, at the earliest ``MIN_TAIL_S`` after the drain, or ``TAIL_S`` after the
  drain, whichever comes first). Prefork (taskfleet and Celery): the worker's pool
  processes (its child processes, psutil, less taskfleet's heartbeat sidecar). Solo: the
  fleet's live CPU worker processes (a retiring one counts until it has exited; their
  sidecars are not counted either).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psutil  # type: ignore[import-untyped]
import redis

from bench.common import WORKER_READY_TIMEOUT_S, Summary, completion_timeout, poll_until
from bench.procs import LOG_DIR, WorkerGroup
from bench.report import NOT_AVAILABLE, Table
from bench.services import BENCH_STACK_DIR, flush_redis, services
from bench.workloads.base import Options, failure, log
from taskfleet.fleet.scaling import POLL_EVERY_S
from taskfleet.fleet.supervisor import SUPERVISE_INTERVAL_S
from taskfleet.workers.profiles import DISABLE_PERSISTER_ENV

if TYPE_CHECKING:
    from taskfleet.fleet import Event, Fleet

WORKLOAD = "W7"
DEFAULT_JOBS = 2000
QUICK_JOBS = 300
ROUNDS = 2000
MIN_PROCS = 1
MAX_PROCS = 4
INTERVAL_S = 1.0
SAMPLE_S = 0.1
TAIL_S = 30.0
QUICK_TAIL_S = 5.0
IDLE_BEFORE_S = 2.0
#: One warm-up job: more would make Celery's autoscaler grow (it scales on reserved
#: messages, prefetch 4) and start the burst above the minimum.
WARMUP_JOBS = 1
CHECK_CHUNK = 500
META_PREFIX = "celery-task-meta-"
TF_KIND = "cpu.checksum"
SYSTEMS = ("taskfleet", "taskfleet_prefork", "celery", "celery_p1")
#: The systems taskfleet as shipped is held to the drain and process-seconds targets against.
PEERS = ("celery", "celery_p1")
#: Ratios shown without a target: (subject, compared with).
COMPARISONS = (("taskfleet", "taskfleet_prefork"), ("taskfleet_prefork", "celery"))
TASKFLEET_SYSTEMS = ("taskfleet", "taskfleet_prefork")
LABELS = {
    "taskfleet": "taskfleet as shipped (solo workers, `taskfleet up` supervisor; tick 1 s)",
    "taskfleet_prefork": "taskfleet, prefork (the old default; tick 1 s)",
    "celery": "Celery `--autoscale=4,1`",
    "celery_p1": "Celery `--autoscale=4,1`, prefetch 1, `-O fair`",
}
#: Worker flags of the ``celery_p1`` peer: the delivery settings Celery's docs advise for
#: long-running jobs, and taskfleet's own (one reserved job per process).
PREFETCH_ONE_FLAGS = ("--prefetch-multiplier", "1", "-O", "fair")
TARGET_DRAIN_RATIO = 0.7
CPU_SAMPLES = 200
TICK_JOIN_S = 15.0
#: The fleet's I/O worker (it consumes nothing here; ``taskfleet up`` always starts one).
FLEET_IO_CONCURRENCY = 2
#: Pause between two supervision rounds of the fleet: ``taskfleet up``'s.
FLEET_SUPERVISE_S = SUPERVISE_INTERVAL_S
#: The fleet's logs and status file, under the bench's log folder.
FLEET_DIR = LOG_DIR / "w7-fleet"
CPU_CHILD_PREFIX = "cpu-worker"
#: In the command line of a worker's child that is not a pool process.
SIDE_PROCESSES = ("taskfleet.sidecar", "persister", "sharding.service")
#: The tail lasts at least this long (or ``tail_s`` if shorter), so that a resize decided
#: during a short drain is seen: two ticks (each waits up to 1 s for ``inspect``) and the
#: supervisor's next read of the size asked for.
MIN_TAIL_S = 3.0


def payload(index: int) -> dict[str, Any]:
    """The job argument: ``rounds`` plus an index so every digest differs."""
    return {"rounds": ROUNDS, "i": index}


def cpu_ms_per_job() -> float:
    """In-process CPU time of one job body (the work itself, no framework)."""
    from bench.systems.celery_autoscale_app import checksum_body

    started = time.process_time()
    for i in range(CPU_SAMPLES):
        checksum_body(payload(i))
    return (time.process_time() - started) / CPU_SAMPLES * 1000


def _check_body() -> None:
    """Guard: the stock task body is taskfleet's ``cpu.checksum`` body (same digest)."""
    from bench.systems.celery_autoscale_app import checksum_body

    digest = json.dumps(payload(0), sort_keys=True, separators=(",", ":")).encode()
    for _ in range(ROUNDS):
        digest = hashlib.sha256(digest).digest()
    if checksum_body(payload(0))["sha256"] != digest.hex():
        raise RuntimeError("W7 stock task body differs from cpu.checksum")


def child_count(pid: int) -> int:
    """Pool processes of a prefork worker right now: its child processes, except taskfleet's
    side processes (the heartbeat sidecar every worker starts; the persister, off here)."""
    try:
        children = psutil.Process(pid).children()
    except psutil.Error:
        return 0
    count = 0
    for child in children:
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if not any(marker in cmdline for marker in SIDE_PROCESSES):
            count += 1
    return count


@dataclass
class PoolSampler:
    """Calls ``counter`` (the CPU processes running now) every ``SAMPLE_S`` in a thread."""

    counter: Callable[[], int]
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def count(self) -> int:
        """The CPU processes right now."""
        return self.counter()

    def start(self) -> None:
        """Start sampling."""
        self._thread = threading.Thread(target=self._loop, name="w7-sampler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), self.count()))
            self._stop.wait(SAMPLE_S)

    def stop(self) -> None:
        """Stop sampling (one last sample is taken)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(TICK_JOIN_S)
        self.samples.append((time.perf_counter(), self.count()))

    def latest(self) -> int:
        """The newest sample (or a fresh count)."""
        return self.samples[-1][1] if self.samples else self.count()

    def integrate(self, start: float, end: float) -> float:
        """Process-seconds between ``start`` and ``end`` (each sample holds until the next)."""
        total = 0.0
        points = self.samples
        for (t0, count), (t1, _) in itertools.pairwise(points):
            lo, hi = max(t0, start), min(t1, end)
            if hi > lo:
                total += count * (hi - lo)
        return total

    def first_reaching(self, procs: int, start: float) -> float | None:
        """Seconds after ``start`` when the pool first had ``procs`` processes."""
        for at, count in self.samples:
            if at >= start and count >= procs:
                return at - start
        return None

    def peak(self, start: float, end: float) -> int:
        """Most processes seen between ``start`` and ``end``."""
        return max((c for t, c in self.samples if start <= t <= end), default=0)


def _wait_results(client: redis.Redis, ids: list[str], timeout: float, what: str) -> None:
    """Until every id has a SUCCESS meta in Redis (oldest first, a chunk per round trip)."""
    pending = list(ids)

    def check() -> bool:
        while pending:
            chunk = pending[:CHECK_CHUNK]
            done = 0
            for value in client.mget([META_PREFIX + i for i in chunk]):
                if value is None:
                    break
                status = json.loads(value)["status"]
                if status == "FAILURE":
                    raise RuntimeError(f"a W7 job failed: {value[:300]!r}")
                if status != "SUCCESS":
                    break
                done += 1
            del pending[:done]
            if done < len(chunk):
                return False
        return True

    poll_until(check, timeout, what, interval=0.005)


class Ticker:
    """The bench process as taskfleet's beat: ``run_tick`` every ``INTERVAL_S`` in a thread."""

    def __init__(self, app: Any, client: redis.Redis) -> None:
        """Bind to the fleet's app and the autoscaler's Redis."""
        from taskfleet.config.autoscale import load_autoscale_settings

        self.app = app
        self.client = client
        self.settings = load_autoscale_settings(
            interval=INTERVAL_S,
            cpu_worker_min=MIN_PROCS,
            cpu_worker_max=MAX_PROCS,
            cpu_pool_min=MIN_PROCS,
            cpu_pool_max=MAX_PROCS,
        )
        self.entries: list[tuple[float, float, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="w7-ticker", daemon=True)

    def start(self) -> None:
        """Start ticking."""
        self._thread.start()

    def _loop(self) -> None:
        from taskfleet.scheduler.tick import run_tick

        while not self._stop.is_set():
            began = time.perf_counter()
            try:
                entry = run_tick(self.app, self.settings, self.client)
            except Exception as exc:  # run_tick should not raise; keep ticking if it does
                entry = {"status": "error", "reason": repr(exc)}
            self.entries.append((began, time.perf_counter() - began, entry))
            self._stop.wait(max(0.0, INTERVAL_S - (time.perf_counter() - began)))

    def stop(self) -> None:
        """Stop ticking (waits for a running tick)."""
        self._stop.set()
        self._thread.join(TICK_JOIN_S)

    def summary(self, start: float) -> dict[str, Any]:
        """Tick durations and the cpu-pool decisions made from ``start`` on."""
        durations = [d for _, d, _ in self.entries]
        decisions = []
        for began, took, entry in self.entries:
            cpu = entry.get("pools", {}).get("cpu")
            if began < start - INTERVAL_S:
                continue
            if not cpu:
                decisions.append({"at_s": round(began - start, 2), "status": entry.get("status")})
                continue
            decision, inputs = cpu["decision"], cpu["inputs"]
            decisions.append(
                {
                    "at_s": round(began - start, 2),
                    "took_s": round(took, 2),
                    "action": decision.get("action"),
                    "from": decision.get("current"),
                    "to": decision.get("target"),
                    "depth": inputs.get("depth"),
                    "in_flight": inputs.get("in_flight"),
                    "reason": decision.get("reason"),
                    "result": cpu.get("result"),
                }
            )
        actions = [d for d in decisions if d.get("action") not in (None, "hold")]
        return {
            "ticks": len(durations),
            "tick_s_median": round(Summary.of(durations).median, 3) if durations else None,
            "tick_s_max": round(max(durations), 3) if durations else None,
            "actions": actions,
            "decisions": decisions,
        }


@dataclass
class Harness:
    """What a system provides to the shared measurement."""

    count: Callable[[], int]
    check_alive: Callable[[], None]
    stop: Callable[[], None]
    publish: Callable[[list[dict[str, Any]]], list[str]]
    results: redis.Redis
    before: Callable[[], None] = lambda: None
    after: Callable[[], None] = lambda: None
    extra: Callable[[float, list[str]], dict[str, Any]] = lambda start, ids: {}


def worker_harness(
    workers: WorkerGroup,
    publish: Callable[[list[dict[str, Any]]], list[str]],
    results: redis.Redis,
    **hooks: Any,
) -> Harness:
    """A harness around one prefork worker: its pool processes are what is counted."""
    return Harness(
        lambda: child_count(workers.procs[0].pid),
        workers.check_alive,
        workers.stop,
        publish,
        results,
        **hooks,
    )


def _measure(h: Harness, n: int, tail_s: float) -> dict[str, Any]:
    """Warm up, idle, burst, drain, tail; always stops the workers."""
    sampler: PoolSampler | None = None
    try:
        warm = h.publish([payload(-1 - i) for i in range(WARMUP_JOBS)])
        deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
        while True:
            h.check_alive()
            try:
                _wait_results(h.results, warm, 1.0, "W7 warm-up")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
        sampler = PoolSampler(h.count)
        idle_procs = sampler.count()
        h.before()
        sampler.start()
        time.sleep(IDLE_BEFORE_S)
        jobs = [payload(i) for i in range(n)]
        started = time.perf_counter()
        ids = h.publish(jobs)
        published = time.perf_counter() - started
        _wait_results(h.results, ids, completion_timeout(n), f"W7 drain of {n} jobs")
        drained = time.perf_counter()
        limit = drained + tail_s
        settled = drained + min(MIN_TAIL_S, tail_s)
        floor = max(MIN_PROCS, idle_procs)  # as shipped, the standby is counted at idle too
        while time.perf_counter() < limit:
            h.check_alive()
            if sampler.latest() <= floor and time.perf_counter() > settled:
                break
            time.sleep(SAMPLE_S)
        sampler.stop()
        tail_end = sampler.samples[-1][0]
        back_to_min = sampler.latest() <= floor
        return {
            "n": n,
            "idle_procs": idle_procs,
            "publish_s": published,
            "drain_s": drained - started,
            "jobs_per_s": n / (drained - started),
            "proc_s_drain": sampler.integrate(started, drained),
            "proc_s_total": sampler.integrate(started, tail_end),
            "window_s": tail_end - started,
            "tail_s": tail_end - drained,
            "back_to_min": back_to_min,
            "peak_procs": sampler.peak(started, tail_end),
            "to_max_s": sampler.first_reaching(MAX_PROCS, started),
            "to_2_s": sampler.first_reaching(2, started),
            **h.extra(started, ids),
        }
    finally:
        if sampler is not None:
            sampler.stop()
        try:
            h.after()
        finally:
            h.stop()
            h.results.close()


def _taskfleet_settings(url: str, tag: str, **overrides: Any) -> tuple[Any, dict[str, str]]:
    """Settings on private queues, and the matching ``TASKFLEET_*`` environment."""
    from taskfleet.config import load_settings

    db = services().sqlalchemy_url
    queues = {"cpu_queue": f"cpu-w7-{tag}", "io_queue": f"io-w7-{tag}"}
    settings = load_settings(broker_url=url, redis_url=url, database_url=db, **queues, **overrides)
    env = {
        "TASKFLEET_BROKER_URL": url,
        "TASKFLEET_REDIS_URL": url,
        "TASKFLEET_DATABASE_URL": db,
        "TASKFLEET_DATA_DIR": BENCH_STACK_DIR,
        "TASKFLEET_CPU_QUEUE": queues["cpu_queue"],
        "TASKFLEET_IO_QUEUE": queues["io_queue"],
        DISABLE_PERSISTER_ENV: "1",
    }
    return settings, env


class Producer:
    """The bench's side of a taskfleet run: publishes the burst and plays beat (``ticker``)."""

    def __init__(self, app: Any, url: str) -> None:
        """A client of ``app`` and a ticker on the autoscaler's Redis at ``url``."""
        from taskfleet.client import Client

        self.client = Client(app)
        self.state = redis.Redis.from_url(url)
        self.ticker = Ticker(app, self.state)

    def publish(self, jobs: list[dict[str, Any]]) -> list[str]:
        """One ``enqueue_many`` of the burst; the job ids."""
        return [h.id for h in self.client.enqueue_many([(TF_KIND, job) for job in jobs])]

    def close(self) -> None:
        """Stop ticking, close the client and the Redis connection."""
        self.ticker.stop()
        self.client.close()
        self.state.close()


def run_taskfleet_prefork(n: int, tail_s: float) -> dict[str, Any]:
    """One W7 run against taskfleet's autoscaler resizing one prefork worker (the old path)."""
    from taskfleet.app import create_app
    from taskfleet.workers.profiles import cpu_profile

    url = services().redis_for("autoscale_taskfleet")
    flush_redis(url)
    tag = uuid.uuid4().hex[:8]
    settings, env = _taskfleet_settings(url, tag, cpu_pool="prefork")
    env["TASKFLEET_CPU_POOL"] = "prefork"
    argv = cpu_profile(settings, MIN_PROCS).argv(hostname=f"w7-tf-{tag}@%h", loglevel="WARNING")
    workers = WorkerGroup("w7-taskfleet-prefork")
    producer = Producer(create_app(settings), url)
    workers.spawn(argv, env)
    harness = worker_harness(
        workers,
        producer.publish,
        redis.Redis.from_url(url),
        before=producer.ticker.start,
        after=producer.close,
        extra=lambda start, ids: {"autoscaler": producer.ticker.summary(start)},
    )
    return _measure(harness, n, tail_s)


@contextlib.contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` for the block (a fleet's children inherit our environment)."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


@dataclass
class _Seen:
    """One CPU worker process of the fleet, as the sampler saw it."""

    name: str
    pid: int
    node: str | None
    launched: float  # wall clock, when the sampler first saw it (the first: when sampling began)
    gone: float | None = None  # wall clock, first sample that found it exited


class FleetRun:
    """A :class:`~taskfleet.fleet.Fleet` supervised in a thread while the bench measures.

    ``Fleet.supervise`` runs in its own thread (it blocks); solo workers the scaler starts are
    launched from that thread, which lives until :meth:`stop`.
    """

    def __init__(self, fleet: Fleet) -> None:
        """Wrap a started, ready fleet."""
        self.fleet = fleet
        self.events: list[Event] = []
        self.seen: dict[int, _Seen] = {}
        self.error: BaseException | None = None
        self.leftovers: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="w7-fleet", daemon=True)

    def start(self) -> None:
        """Start supervising (the slot group is registered on the first round)."""
        self._thread.start()

    def _supervise(self) -> None:
        try:
            self.fleet.supervise(
                interval=FLEET_SUPERVISE_S, on_event=self.events.append, until=self._stop.is_set
            )
        except BaseException as exc:  # reported to the measuring thread by check_alive
            self.error = exc

    def check_alive(self) -> None:
        """Raise if the supervisor stopped (it gave up on a crashing child, or failed)."""
        if self.error is not None:
            raise RuntimeError(f"W7 fleet supervisor stopped: {self.error!r}") from self.error
        if not self._thread.is_alive() and not self._stop.is_set():
            raise RuntimeError("W7 fleet supervisor thread ended")

    def count(self) -> int:
        """Live CPU worker processes of the fleet (retiring ones until they exit)."""
        now = time.time()
        live = 0
        with self._lock:
            for child in list(self.fleet.children):
                if not child.name.startswith(CPU_CHILD_PREFIX) or child.pid is None:
                    continue
                pid = child.pid
                seen = self.seen.get(pid)
                if seen is None:  # first seen within SAMPLE_S of its launch (psutil's start
                    # time is only as good as the kernel's boot time, a whole second)
                    seen = self.seen[pid] = _Seen(child.name, pid, child.nodename, now)
                if child.returncode() is None:
                    live += 1
                elif seen.gone is None:
                    seen.gone = now
            for seen in self.seen.values():  # retired and dropped from the fleet
                if seen.gone is None and not psutil.pid_exists(seen.pid):
                    seen.gone = now
        return live

    def stop(self) -> None:
        """Stop supervising, then stop every child (the slot group is unregistered)."""
        self._stop.set()
        self._thread.join(TICK_JOIN_S)
        try:
            self.fleet.stop()
        finally:
            self.leftovers = self.fleet.leftovers()

    def summary(self, started: float, ids: list[str], results: redis.Redis) -> dict[str, Any]:
        """Each CPU worker process: when it was launched and exited, when it finished its
        first job and how many it ran (from the results' ``worker`` and ``date_done``), all in
        seconds from the first publish (``started``, a ``perf_counter`` reading)."""
        wall0 = time.time() - (time.perf_counter() - started)
        firsts, jobs = _first_jobs(results, ids)
        procs = []
        with self._lock:
            seen = sorted(self.seen.values(), key=lambda s: s.launched)
        for s in seen:
            first = firsts.get(s.node) if s.node else None
            procs.append(
                {
                    "name": s.name,
                    "pid": s.pid,
                    "launched_s": round(s.launched - wall0, 2),
                    "first_job_s": None if first is None else round(first - wall0, 2),
                    "launch_to_first_job_s": None
                    if first is None
                    else round(first - s.launched, 2),
                    "jobs": jobs.get(s.node, 0) if s.node else 0,
                    "exited_s": None if s.gone is None else round(s.gone - wall0, 2),
                }
            )
        events = [
            {"kind": e.kind, "name": e.name, "pid": e.pid, "detail": e.detail} for e in self.events
        ]
        return {"processes": procs, "events": events}


def _first_jobs(client: redis.Redis, ids: list[str]) -> tuple[dict[str, float], dict[str, int]]:
    """Per worker node: when it finished its first of ``ids`` (wall clock), and how many."""
    firsts: dict[str, float] = {}
    jobs: dict[str, int] = {}
    for index in range(0, len(ids), CHECK_CHUNK):
        chunk = ids[index : index + CHECK_CHUNK]
        for raw in client.mget([META_PREFIX + i for i in chunk]):
            if raw is None:
                continue
            meta = json.loads(raw)
            node, done = meta.get("worker"), meta.get("date_done")
            if not isinstance(node, str) or not isinstance(done, str):
                continue
            at = datetime.fromisoformat(done)
            stamp = (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()
            firsts[node] = min(stamp, firsts.get(node, stamp))
            jobs[node] = jobs.get(node, 0) + 1
    return firsts, jobs


def run_taskfleet(n: int, tail_s: float) -> dict[str, Any]:
    """One W7 run against taskfleet as shipped: solo CPU workers scaled by a ``Fleet``."""
    from taskfleet.app import create_app
    from taskfleet.config.settings import DEFAULT_CPU_POOL
    from taskfleet.fleet import Fleet
    from taskfleet.fleet.children import FleetOptions

    url = services().redis_for("autoscale_taskfleet")
    flush_redis(url)
    tag = uuid.uuid4().hex[:8]
    shutil.rmtree(FLEET_DIR, ignore_errors=True)
    FLEET_DIR.mkdir(parents=True)
    settings, _ = _taskfleet_settings(
        url,
        tag,
        data_dir=str(FLEET_DIR.resolve()),
        cpu_pool=DEFAULT_CPU_POOL,
        log_level="WARNING",
    )
    options = FleetOptions(
        cpu_concurrency=MIN_PROCS,
        io_concurrency=FLEET_IO_CONCURRENCY,
        flower=False,
        beat=False,
        metrics=False,
    )
    with _environ(DISABLE_PERSISTER_ENV, "1"):  # every child: persister off, as in the others
        fleet = Fleet(settings, options)
        try:
            fleet.start()
            fleet.wait_ready()
        except BaseException:
            fleet.stop()
            raise
        fleet_run = FleetRun(fleet)
        try:
            producer = Producer(create_app(settings), url)
            results = redis.Redis.from_url(url)
        except BaseException:
            fleet.stop()
            raise

        def extra(start: float, ids: list[str]) -> dict[str, Any]:
            return {
                "autoscaler": producer.ticker.summary(start),
                "fleet": fleet_run.summary(start, ids, results),
            }

        fleet_run.start()
        harness = Harness(
            fleet_run.count,
            fleet_run.check_alive,
            fleet_run.stop,
            producer.publish,
            results,
            before=producer.ticker.start,
            after=producer.close,
            extra=extra,
        )
        out = _measure(harness, n, tail_s)
    if fleet_run.leftovers:
        out["leftover_pids"] = fleet_run.leftovers
    return out


def run_celery(n: int, tail_s: float, extra_flags: tuple[str, ...] = ()) -> dict[str, Any]:
    """One W7 run against stock Celery's ``--autoscale`` (plus ``extra_flags``)."""
    from bench.systems import celery_app as capp
    from bench.systems.celery_autoscale_app import make_app

    url = services().redis_for("autoscale_celery")
    flush_redis(url)
    tag = uuid.uuid4().hex[:8]
    app, task = make_app(url, url)
    argv = [
        "celery",
        "-A",
        "bench.systems.celery_autoscale_app",
        "worker",
        "-P",
        "prefork",
        f"--autoscale={MAX_PROCS},{MIN_PROCS}",
        "-Q",
        capp.QUEUE,
        "-n",
        f"w7-celery-{tag}@%h",
        "-l",
        "WARNING",
        *extra_flags,
    ]
    workers = WorkerGroup("w7-celery")

    def publish(jobs: list[dict[str, Any]]) -> list[str]:
        return [task.apply_async((job,)).id for job in jobs]

    def after() -> None:
        with contextlib.suppress(Exception):
            app.close()

    workers.spawn(argv, {capp.BROKER_ENV: url, capp.BACKEND_ENV: url})
    harness = worker_harness(workers, publish, redis.Redis.from_url(url), after=after)
    return _measure(harness, n, tail_s)


RUNNERS: dict[str, Callable[[int, float], dict[str, Any]]] = {
    "taskfleet": run_taskfleet,
    "taskfleet_prefork": run_taskfleet_prefork,
    "celery": run_celery,
    "celery_p1": lambda n, tail_s: run_celery(n, tail_s, PREFETCH_ONE_FLAGS),
}


def run(n: int = DEFAULT_JOBS, runs: int = 1, tail_s: float = TAIL_S) -> dict[str, Any]:
    """``runs`` rounds, alternating the systems' order; raw figures per system.

    Returns:
        ``{"cpu_ms_per_job": ..., "taskfleet": [run, ...], "celery": [run, ...]}``, where
        a failed run is ``{"error": ...}``.
    """
    _check_body()
    out: dict[str, Any] = {"cpu_ms_per_job": cpu_ms_per_job(), **{s: [] for s in SYSTEMS}}
    for index in range(runs):
        order = SYSTEMS if index % 2 == 0 else SYSTEMS[::-1]
        for name in order:
            log.info("W7 %s run %d/%d", name, index + 1, runs)
            try:
                out[name].append(RUNNERS[name](n, tail_s))
            except Exception as exc:
                out[name].append({"error": failure(name, exc)})
    return out


def _fmt(summary: Summary | None, digits: int = 1) -> str:
    if summary is None:
        return NOT_AVAILABLE
    if summary.runs == 1:
        return f"{summary.median:.{digits}f}"
    return f"{summary.median:.{digits}f} ({summary.low:.{digits}f}-{summary.high:.{digits}f})"


def _summ(runs: list[dict[str, Any]], key: str) -> Summary | None:
    values = [r[key] for r in runs if "error" not in r and r.get(key) is not None]
    return Summary.of(values) if values else None


def _verdict(ok: bool | None) -> str:
    return NOT_AVAILABLE if ok is None else ("met" if ok else "**missed**")


def _ratio_rows(
    t: Table,
    ours: dict[str, Summary | None] | None,
    theirs: dict[str, Summary | None] | None,
    label: str,
    *,
    targets: bool,
) -> None:
    """``label`` (``subject ÷ peer``), and with ``targets`` the issue's targets against it."""

    def ratio(key: str) -> float | None:
        a = ours and ours[key]
        b = theirs and theirs[key]
        return a.median / b.median if a and b and b.median else None

    drain, p_drain, p_total = ratio("drain_s"), ratio("proc_s_drain"), ratio("proc_s_total")
    blank = [NOT_AVAILABLE] * (len(t.headers) - 5)
    t.rows.append(
        [
            label,
            f"{drain:.2f}x" if drain else NOT_AVAILABLE,
            NOT_AVAILABLE,
            f"{p_drain:.2f}x" if p_drain else NOT_AVAILABLE,
            f"{p_total:.2f}x" if p_total else NOT_AVAILABLE,
            *blank,
        ]
    )
    if not targets:
        return
    t.rows.append(
        [
            "target",
            f"≤ {TARGET_DRAIN_RATIO:.2f}x (≥30% faster): "
            + _verdict(None if drain is None else drain <= TARGET_DRAIN_RATIO),
            NOT_AVAILABLE,
            "≤ 1.00x: " + _verdict(None if p_drain is None else p_drain <= 1.0),
            "≤ 1.00x: " + _verdict(None if p_total is None else p_total <= 1.0),
            *blank,
        ]
    )


def _standby_note(runs: list[dict[str, Any]]) -> str | None:
    """When the standby (launched before the burst) finished its first job of the burst."""
    standbys = [
        p
        for r in runs
        for p in r.get("fleet", {}).get("processes", [])[MIN_PROCS:]
        if p["launched_s"] < 0
    ]
    if not standbys:
        return None
    firsts = [p["first_job_s"] for p in standbys if p.get("first_job_s") is not None]
    what = (
        f"{LABELS['taskfleet']}: a standby solo worker, booted before the burst, is counted as "
        "a process from its launch (so the idle count is 2)"
    )
    if not firsts:
        return f"{what}; it ran no job of the burst."
    spread = Summary.of(firsts)
    return (
        f"{what}; promoted by the grow, it finished its first job of the burst "
        f"{spread.median:.2f} s after the first publish (range {spread.low:.2f}-"
        f"{spread.high:.2f}), {sum(p['jobs'] for p in standbys):,} jobs in all."
    )


def _launch_note(runs: list[dict[str, Any]]) -> str | None:
    """How long the solo workers the scaler started took from launch to their first job."""
    started = [
        p
        for r in runs
        for p in r.get("fleet", {}).get("processes", [])[MIN_PROCS:]
        if p["launched_s"] >= 0
    ]
    if not started:
        return None
    waits = [
        p["launch_to_first_job_s"] for p in started if p.get("launch_to_first_job_s") is not None
    ]
    idle = len(started) - len(waits)
    what = f"{LABELS['taskfleet']}: the scaler started {len(started)} solo worker(s)"
    if not waits:
        return f"{what}; none ran a job of the burst (it had drained before they took any)."
    spread = Summary.of(waits)
    return (
        f"{what}; from launch to its first finished job each took median "
        f"{spread.median:.2f} s (range {spread.low:.2f}-{spread.high:.2f})"
        + (f", and {idle} ran no job of the burst" if idle else "")
        + ". Until then a worker is counted as a process but runs nothing."
    )


def _tick_note(name: str, runs: list[dict[str, Any]]) -> str | None:
    if not runs:
        return None
    tick = runs[0]["autoscaler"]
    acts = "; ".join(
        f"{a['at_s']:+.1f} s {a['action']} {a['from']}→{a['to']}" for a in tick["actions"]
    )
    return (
        f"{LABELS[name]} ticks (run 1): {tick['ticks']} ticks, median "
        f"{tick['tick_s_median']} s, max {tick['tick_s_max']} s; decisions after the burst: "
        f"{acts or 'none'}."
    )


def table(options: Options) -> Table:
    """W7 as a table (``options.long_runs`` rounds; ``--quick``: fewer jobs, 5 s tail)."""
    n = QUICK_JOBS if options.quick else DEFAULT_JOBS
    tail_s = QUICK_TAIL_S if options.quick else TAIL_S
    data = run(n, options.long_runs, tail_s)
    t = Table(
        WORKLOAD,
        f"autoscaler, burst of {n:,} `cpu.checksum` jobs (rounds={ROUNDS}), "
        f"{MIN_PROCS}..{MAX_PROCS} CPU processes",
        [
            "system",
            "drain s",
            "jobs/s",
            "process-s during drain",
            "process-s incl. tail",
            "peak procs",
            "tail s (back to min?)",
            "s to 2 / to 4 procs",
        ],
    )
    figures: dict[str, dict[str, Summary | None]] = {}
    for name in SYSTEMS:
        runs = data[name]
        errors = [r["error"] for r in runs if "error" in r]
        good = [r for r in runs if "error" not in r]
        if not good:
            t.rows.append([LABELS[name], errors[0] if errors else "no run", *[NOT_AVAILABLE] * 6])
            continue
        f = {k: _summ(good, k) for k in ("drain_s", "jobs_per_s", "proc_s_drain", "proc_s_total")}
        figures[name] = f
        tails = ", ".join(
            f"{r['tail_s']:.1f} ({'yes' if r['back_to_min'] else 'no'})" for r in good
        )
        reach = ", ".join(f"{_s(r['to_2_s'])} / {_s(r['to_max_s'])}" for r in good)
        t.rows.append(
            [
                LABELS[name],
                _fmt(f["drain_s"], 2),
                _fmt(f["jobs_per_s"], 0),
                _fmt(f["proc_s_drain"], 1),
                _fmt(f["proc_s_total"], 1),
                ", ".join(str(r["peak_procs"]) for r in good),
                tails,
                reach,
            ]
        )
        if errors:
            t.notes.append(f"{LABELS[name]}: {len(errors)} failed run(s): {errors[0]}")
    tf = figures.get("taskfleet")
    for peer in PEERS:
        _ratio_rows(t, tf, figures.get(peer), f"taskfleet ÷ {LABELS[peer]}", targets=True)
    for subject, other in COMPARISONS:
        label = f"{subject} ÷ {other}"
        _ratio_rows(t, figures.get(subject), figures.get(other), label, targets=False)
    good_runs = {name: [r for r in data[name] if "error" not in r] for name in TASKFLEET_SYSTEMS}
    t.notes += [
        f"Job body: {data['cpu_ms_per_job']:.2f} ms of CPU in-process; {n:,} jobs ≈ "
        f"{n * data['cpu_ms_per_job'] / 1000:.1f} CPU-s of work on a 2-core machine.",
        f"Runs: {options.long_runs} per system (W7 defaults to 1: each run idles "
        f"{IDLE_BEFORE_S:.0f} s, drains, then samples up to {tail_s:.0f} s of tail; `--runs` "
        "sets it). Systems alternate order between runs.",
        "Drain = first publish → last result readable in Redis (publishing included: "
        "taskfleet one `enqueue_many`, Celery an `apply_async` loop). Process-seconds = "
        f"CPU processes sampled every {SAMPLE_S * 1000:.0f} ms, integrated from the first "
        f"publish; the tail ends when the count is back to its idle size (at the earliest "
        f"{min(MIN_TAIL_S, tail_s):.0f} s after the drain, so a resize asked during the drain "
        f"is seen) or {tail_s:.0f} s after the drain. Prefork (taskfleet_prefork, Celery): "
        "the worker's pool processes (neither its parent nor taskfleet's heartbeat sidecar "
        "counted). taskfleet as shipped: the fleet's live solo CPU worker processes, each a "
        "whole worker (its sidecar not counted), counted from launch (before it takes jobs) "
        "until it has exited; the fleet's gevent I/O worker (idle here) is not counted.",
        "taskfleet (both): the bench process calls `run_tick` every 1 s (each tick also waits "
        "for the 1 s `inspect` broadcast, so ticks are ~1-2 s apart); autoscale defaults "
        "otherwise (up cooldown 10 s, down cooldown 30 s after the last growth, step up 4, "
        "step down 1 per tick, target backlog 4). As shipped, a tick writes the size it wants "
        "to the slot group in Redis and the `Fleet` supervisor (supervision round "
        f"{FLEET_SUPERVISE_S:g} s, as shipped; target read every {POLL_EVERY_S:g} s) promotes its standby worker "
        "first, starts further `cpu-worker-N` solo workers and a new standby, or SIGTERMs the "
        "newest; prefork is resized by remote control. Celery: its "
        "autoscaler runs in the worker, re-evaluated on every received message, scale-down "
        "30 s (keepalive) after the last scale-up.",
    ]
    for note in (_standby_note(good_runs["taskfleet"]), _launch_note(good_runs["taskfleet"])):
        if note:
            t.notes.append(note)
    for name in TASKFLEET_SYSTEMS:
        note = _tick_note(name, good_runs[name])
        if note:
            t.notes.append(note)
    t.raw.append(data)
    return t


def _s(value: float | None) -> str:
    return NOT_AVAILABLE if value is None else f"{value:.1f}"


if __name__ == "__main__":
    import sys

    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 500, tail_s=5.0), indent=2))
