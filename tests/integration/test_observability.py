"""``/metrics`` and ``/readyz`` against real workers (prefork, gevent, solo) on real Redis.

Each fleet writes its metric files to its own ``PROMETHEUS_MULTIPROC_DIR``; the endpoint is
served in this process on a free loopback port, exactly as ``taskfleet metrics serve`` builds
it, and the values scraped are compared with the jobs the test ran.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from taskfleet.app_config import create_app
from taskfleet.client import Client
from taskfleet.config import load_settings
from taskfleet.config.observability import load_observability_settings
from taskfleet.devstack.common import choose_port
from taskfleet.devstack.redis_server import redis_executable, redis_ping
from taskfleet.observability.server import build_endpoint, make_server
from taskfleet.routing.depth import redis_priority_keys
from taskfleet.routing.wire import SENT_AT_HEADER
from taskfleet.scheduler.store import REPLICAS_KEY, AutoscaleStore
from taskfleet.workers.profiles import cpu_profile, io_profile
from tests.support.waiting import wait_for
from tests.support.workers import Fleet

LOOPBACK = "127.0.0.1"
CPU_JOBS, IO_JOBS, STAMPED_JOBS = 7, 5, 2
#: How long before publishing the stamped jobs claim they were sent.
STAMPED_WAIT_S = 5.0
RESULT_TIMEOUT_S = 30.0
SCRAPE_DEADLINE_S = 20.0
READY_DEADLINE_S = 20.0
REDIS_START_DEADLINE_S = 10.0
DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "observability"
METRIC = re.compile(r"\btaskfleet_[a-z_]+\b")
#: ``metric{matchers}`` and each ``label op "value"`` inside.
SELECTOR = re.compile(r"\b(taskfleet_[a-z_]+)\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """Every sample of ``/metrics``, keyed by name and labels."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when absent)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def start_fleet(env: dict[str, str], log_dir: Path, solo: bool) -> Fleet:
    fleet = Fleet(env, log_dir)
    settings = load_settings(**fleet.settings_overrides)
    if solo:
        fleet.start(cpu_profile(settings, 1), "cpu")
    else:
        fleet.start_all([(cpu_profile(settings, 2), "cpu"), (io_profile(settings, 4), "io")])
    return fleet


class Served:
    """A fleet and the metrics endpoint reading its files."""

    def __init__(self, fleet: Fleet, metrics_dir: Path, **limits: Any) -> None:
        self.fleet = fleet
        settings = load_settings(**fleet.settings_overrides)
        obs = load_observability_settings(metrics_cache_s=0, **limits)
        endpoint = build_endpoint(settings, create_app(settings), obs, str(metrics_dir))
        self.server = make_server(endpoint, LOOPBACK, 0)
        self.url = f"http://{LOOPBACK}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def fleets(
    redis_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Served]]:
    """A prefork CPU + gevent I/O fleet and a solo CPU fleet, each with its own files."""
    served: dict[str, Served] = {}
    try:
        for name, solo in (("prefork", False), ("solo", True)):
            suffix = uuid.uuid4().hex[:6]
            folder = tmp_path_factory.mktemp(f"metrics-{name}")
            env = {
                **redis_env,
                "TASKFLEET_CPU_QUEUE": f"cpu-obs-{name}-{suffix}",
                "TASKFLEET_IO_QUEUE": f"io-obs-{name}-{suffix}",
                "PROMETHEUS_MULTIPROC_DIR": str(folder),
                **({"TASKFLEET_CPU_POOL": "solo"} if solo else {}),
            }
            fleet = start_fleet(env, tmp_path_factory.mktemp(f"fleet-{name}"), solo)
            served[name] = Served(fleet, folder)
        yield served
    finally:
        for item in served.values():
            item.close()
            item.fleet.stop()


def run_jobs(fleet: Fleet, cpu: int, io: int) -> None:
    client = Client(fleet.app())
    handles = [client.enqueue("cpu.checksum", {"rounds": 2}) for _ in range(cpu)]
    handles += [client.enqueue("io.wait", {"ms": 1}) for _ in range(io)]
    for handle in handles:
        handle.result(timeout=RESULT_TIMEOUT_S)


def send_stamped(fleet: Fleet, count: int) -> None:
    app = fleet.app()
    sent_at = time.time() - STAMPED_WAIT_S
    for _ in range(count):
        app.send_task(
            "cpu.checksum",
            args=[{"rounds": 1}],
            queue=fleet.env["TASKFLEET_CPU_QUEUE"],
            headers={SENT_AT_HEADER: sent_at},
        ).get(timeout=RESULT_TIMEOUT_S)


@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_job_metrics_count_what_ran(fleets: dict[str, Served], pool: str) -> None:
    """Jobs by kind and state, run-time and queue-wait histograms, summed over processes."""
    served = fleets[pool]
    io = IO_JOBS if pool == "prefork" else 0  # the solo fleet runs no I/O worker
    run_jobs(served.fleet, CPU_JOBS, io)
    send_stamped(served.fleet, STAMPED_JOBS)
    cpu_total = CPU_JOBS + STAMPED_JOBS

    def counted() -> Samples | None:
        samples = scrape(served.url)
        done = value(samples, "taskfleet_jobs_total", kind="cpu.checksum", state="succeeded")
        return samples if done >= cpu_total else None

    samples = wait_for(counted, SCRAPE_DEADLINE_S, f"{cpu_total} cpu.checksum jobs counted")
    assert (
        value(samples, "taskfleet_jobs_total", kind="cpu.checksum", state="succeeded") == cpu_total
    )
    assert value(samples, "taskfleet_job_run_seconds_count", kind="cpu.checksum") == cpu_total
    waits = value(samples, "taskfleet_job_queue_wait_seconds_count", kind="cpu.checksum")
    assert waits == cpu_total  # Client.enqueue stamps its jobs; the others were stamped by hand
    assert value(samples, "taskfleet_job_queue_wait_seconds_sum", kind="cpu.checksum") >= (
        STAMPED_JOBS * STAMPED_WAIT_S
    )
    if io:
        io_done = wait_for(
            lambda: value(
                scrape(served.url), "taskfleet_jobs_total", kind="io.wait", state="succeeded"
            ),
            SCRAPE_DEADLINE_S,
            "io.wait jobs counted (gevent worker)",
        )
        assert io_done == io
    assert value(samples, "taskfleet_worker_heartbeats", state="live") >= 1
    kinds = {dict(labels).get("kind") for name, labels in samples if name == "taskfleet_jobs_total"}
    assert kinds <= {"cpu.checksum", "io.wait", "scheduler.autoscale_tick"}


def deploy_queries() -> dict[str, list[str]]:
    """Every PromQL expression (or HPA metric selector) in ``deploy/observability``, by file."""
    found: dict[str, list[str]] = {}
    alerts = yaml.safe_load((DEPLOY / "prometheus-alerts.yaml").read_text())
    found["alerts"] = [rule["expr"] for group in alerts["groups"] for rule in group["rules"]]
    keda = yaml.safe_load((DEPLOY / "keda-scaledobject.yaml").read_text())
    found["keda"] = [t["metadata"]["query"] for t in keda["spec"]["triggers"]]
    hpa, adapter = yaml.safe_load_all((DEPLOY / "hpa-external.yaml").read_text())
    external = [m["external"]["metric"] for m in hpa["spec"]["metrics"]]
    found["hpa"] = [
        m["name"]
        + "{"
        + ",".join(f'{k}="{v}"' for k, v in m["selector"]["matchLabels"].items())
        + "}"
        for m in external
    ] + [rule["seriesQuery"] for rule in adapter["externalRules"]]
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    found["grafana"] = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    return found


def matching(samples: Samples, metric: str, matchers: dict[str, str]) -> list[float]:
    """Values of ``metric``'s samples whose labels equal ``matchers``."""
    return [
        v
        for (name, labels), v in samples.items()
        if name == metric and matchers.items() <= dict(labels).items()
    ]


def test_deploy_examples_query_metrics_the_endpoint_serves(
    fleets: dict[str, Served], redis_env: dict[str, str]
) -> None:
    """Alert rules, KEDA, HPA and Grafana name only served metrics and labels; the scaling
    queries select the desired-replicas gauge the autoscaler publishes and the queue depth."""
    served = fleets["prefork"]
    client = redis.Redis.from_url(redis_env["TASKFLEET_REDIS_URL"])
    store = AutoscaleStore(client, 1.0)
    saved = client.hgetall(REPLICAS_KEY)
    published = {"cpu": 3, "io": 2}
    store.set_replicas(published)
    try:
        text = httpx.get(f"{served.url}/metrics", timeout=5).text
    finally:
        client.delete(REPLICAS_KEY)
        if saved:
            client.hset(REPLICAS_KEY, mapping=saved)
    families = list(text_string_to_metric_families(text))
    samples: Samples = {
        (s.name, frozenset(s.labels.items())): s.value for f in families for s in f.samples
    }
    names = {f.name for f in families} | {name for name, _ in samples}
    labels_of: dict[str, set[str]] = {}
    for name, labels in samples:
        labels_of.setdefault(name, set()).update(k for k, _ in labels)
    queues = {
        "cpu": served.fleet.env["TASKFLEET_CPU_QUEUE"],
        "io": served.fleet.env["TASKFLEET_IO_QUEUE"],
    }
    queries = deploy_queries()
    assert all(queries.values()), queries
    for source, exprs in queries.items():
        for expr in exprs:
            metrics = set(METRIC.findall(expr))
            assert metrics, f"{source}: no taskfleet metric in {expr!r}"
            assert metrics <= names, f"{source}: {sorted(metrics - names)} not served ({expr!r})"
            for metric, body in SELECTOR.findall(expr):
                for label, op, wanted in MATCHER.findall(body):
                    assert label in labels_of.get(metric, set()), (
                        f"{source}: {metric} has no {label}"
                    )
                    if source in ("keda", "hpa") and "!" not in op:
                        value = queues.get(wanted, wanted) if label == "queue" else wanted
                        assert matching(samples, metric, {label: value}), (source, expr)
    for pool, count in published.items():
        assert matching(samples, "taskfleet_autoscale_desired_replicas", {"pool": pool}) == [count]


def test_queue_gauges_show_depth_and_oldest_age_per_priority(
    fleets: dict[str, Served], redis_env: dict[str, str]
) -> None:
    """Jobs on a queue nobody consumes: depth per priority, an oldest age that grows."""
    served = fleets["prefork"]
    idle = f"cpu-idle-{uuid.uuid4().hex[:6]}"
    env = {**served.fleet.env, "TASKFLEET_CPU_QUEUE": idle}
    idle_fleet = Fleet(env, served.fleet.log_dir)
    watcher = Served(idle_fleet, Path(env["PROMETHEUS_MULTIPROC_DIR"]))
    try:
        app = idle_fleet.app()
        for _ in range(3):
            app.send_task("cpu.checksum", args=[{"rounds": 1}], queue=idle, priority=7)
        app.send_task(
            "cpu.checksum",
            args=[{"rounds": 1}],
            queue=idle,
            priority=2,
            headers={SENT_AT_HEADER: time.time() - STAMPED_WAIT_S},
        )
        first = scrape(watcher.url)
        assert value(first, "taskfleet_queue_depth", queue=idle, priority="7") == 3
        assert value(first, "taskfleet_queue_depth", queue=idle, priority="2") == 1
        assert (
            value(first, "taskfleet_queue_oldest_age_seconds", queue=idle, priority="2")
            >= STAMPED_WAIT_S
        )
        wait_for(
            lambda: (
                value(
                    scrape(watcher.url),
                    "taskfleet_queue_oldest_age_seconds",
                    queue=idle,
                    priority="7",
                )
                > 0
            ),
            SCRAPE_DEADLINE_S,
            "the unstamped tail's observed age to grow",
        )
        assert value(first, "taskfleet_scrape_error", source="queues") == 0
    finally:
        watcher.close()
        broker = redis.Redis.from_url(redis_env["TASKFLEET_BROKER_URL"])
        broker.delete(*redis_priority_keys(idle))


def test_breaker_state_and_counters_are_read_from_the_shared_hash(
    fleets: dict[str, Served], redis_env: dict[str, str]
) -> None:
    """A breaker open fleet-wide shows as 2, with its fleet-wide counters."""
    fleet = fleets["prefork"].fleet
    name = f"obs-{uuid.uuid4().hex[:6]}"
    client = redis.Redis.from_url(redis_env["TASKFLEET_REDIS_URL"])
    client.hset(
        f"taskfleet:breaker:{name}",
        mapping={"state": "open", "n_opened": 2, "n_failures": 5, "n_rejected": 7},
    )
    # A fresh endpoint: breaker names are looked for once a minute.
    watcher = Served(fleet, Path(fleet.env["PROMETHEUS_MULTIPROC_DIR"]))
    try:
        samples = scrape(watcher.url)
    finally:
        watcher.close()
        client.delete(f"taskfleet:breaker:{name}")
    assert value(samples, "taskfleet_scrape_error", source="breakers") == 0
    assert value(samples, "taskfleet_breaker_state", breaker=name) == 2
    assert value(samples, "taskfleet_breaker_opened_total", breaker=name) == 2
    assert value(samples, "taskfleet_breaker_calls_total", breaker=name, outcome="failures") == 5
    assert value(samples, "taskfleet_breaker_calls_total", breaker=name, outcome="rejected") == 7


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A redis-server of this test's own (never the shared one), stoppable and restartable."""
    port = choose_port(None, set())
    argv = [
        str(redis_executable()),
        "--port",
        str(port),
        "--bind",
        LOOPBACK,
        "--save",
        "",
        "--dir",
        str(tmp_path),
    ]
    state: dict[str, Any] = {"port": port, "argv": argv, "proc": None}

    def start() -> None:
        state["proc"] = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: redis_ping(port), REDIS_START_DEADLINE_S, "private redis to answer")

    def stop() -> None:
        proc: subprocess.Popen[bytes] = state["proc"]
        proc.terminate()
        proc.wait(REDIS_START_DEADLINE_S)

    state["start"], state["stop"] = start, stop
    start()
    try:
        yield state
    finally:
        if state["proc"].poll() is None:
            stop()


def test_readyz_goes_unready_when_redis_stops_and_ready_again(
    fleets: dict[str, Served], private_redis: dict[str, Any]
) -> None:
    """Results Redis stopped: /readyz 503 naming it; started again: 200."""
    served = fleets["prefork"]
    env = {
        **served.fleet.env,
        "TASKFLEET_REDIS_URL": f"redis://{LOOPBACK}:{private_redis['port']}/0",
    }
    watcher = Served(Fleet(env, served.fleet.log_dir), Path(env["PROMETHEUS_MULTIPROC_DIR"]))
    try:

        def status() -> int:
            return httpx.get(f"{watcher.url}/readyz", timeout=10).status_code

        wait_for(lambda: status() == 200, READY_DEADLINE_S, "/readyz ready")
        assert httpx.get(f"{watcher.url}/healthz", timeout=5).status_code == 200
        private_redis["stop"]()
        answer = httpx.get(f"{watcher.url}/readyz", timeout=10)
        assert answer.status_code == 503
        assert "FAIL redis" in answer.text
        private_redis["start"]()
        wait_for(lambda: status() == 200, READY_DEADLINE_S, "/readyz ready again")
    finally:
        watcher.close()


def test_readyz_fails_when_the_database_is_unreachable(fleets: dict[str, Served]) -> None:
    """Postgres on a dead loopback port: /readyz 503, naming postgres."""
    served = fleets["prefork"]
    dead = choose_port(None, set())
    env = {
        **served.fleet.env,
        "TASKFLEET_DATABASE_URL": f"postgresql://nobody@{LOOPBACK}:{dead}/none",
    }
    watcher = Served(Fleet(env, served.fleet.log_dir), Path(env["PROMETHEUS_MULTIPROC_DIR"]))
    try:
        answer = httpx.get(f"{watcher.url}/readyz", timeout=10)
        assert answer.status_code == 503
        assert "FAIL postgres" in answer.text
        assert "ok redis" in answer.text
    finally:
        watcher.close()


def health_exit(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``taskfleet health`` (with ``args``) in a fresh process with ``env``."""
    argv = [sys.executable, "-m", "taskfleet.cli", "health", *args]
    return subprocess.run(
        argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=False
    )


def test_taskfleet_health_exit_code_per_state(fleets: dict[str, Served]) -> None:
    """0 with the prefork fleet's workers up; 3 with Postgres on a dead loopback port."""
    env = dict(fleets["prefork"].fleet.env)
    ready = health_exit(env)
    assert ready.returncode == 0, ready.stdout + ready.stderr
    dead = choose_port(None, set())
    down = health_exit(
        {**env, "TASKFLEET_DATABASE_URL": f"postgresql://nobody@{LOOPBACK}:{dead}/none"}
    )
    assert down.returncode == 3, down.stdout + down.stderr
    assert "FAIL postgres" in down.stdout


def test_taskfleet_health_for_one_worker(fleets: dict[str, Served]) -> None:
    """``--worker NAME`` (a container's healthcheck): 0 it answers, 1 it does not, 3 no broker."""
    fleet = fleets["prefork"].fleet
    replies = wait_for(lambda: fleet.app().control.ping(timeout=0.5), 30, "a worker's answer")
    [node] = [name for reply in replies for name in reply][:1]
    answered = health_exit(fleet.env, "--worker", node)
    assert answered.returncode == 0, answered.stdout + answered.stderr
    assert f"ok   worker {node}: answered a ping" in answered.stdout
    silent = health_exit(fleet.env, "--worker", "cpu@no-such-host", "--timeout", "0.5")
    assert silent.returncode == 1, silent.stdout + silent.stderr
    dead = choose_port(None, set())
    no_broker = {**fleet.env, "TASKFLEET_BROKER_URL": f"redis://{LOOPBACK}:{dead}/0"}
    unreachable = health_exit(no_broker, "--worker", node)
    assert unreachable.returncode == 3, unreachable.stdout + unreachable.stderr


def test_readyz_goes_unready_when_a_pools_last_worker_stops(fleets: dict[str, Served]) -> None:
    """The solo fleet's only CPU worker stopped: no consumer on its queue, /readyz 503."""
    served = fleets["solo"]
    queue = served.fleet.env["TASKFLEET_CPU_QUEUE"]
    before = httpx.get(f"{served.url}/readyz", timeout=10).text
    assert f"{queue}: 1" in before
    served.fleet.stop()
    answer = httpx.get(f"{served.url}/readyz", timeout=10)
    assert answer.status_code == 503
    assert f"{queue}: 0" in answer.text
