"""Metric labels stay bounded, the endpoint's auth and exit codes, and how ``up`` plans it."""

from __future__ import annotations

import base64
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import httpx
import pytest
from prometheus_client import CollectorRegistry

from taskfleet.config import load_settings
from taskfleet.config.observability import DEFAULT_METRICS_HOST
from taskfleet.fleet.children import FleetOptions
from taskfleet.fleet.plan import MULTIPROC_ENV, plan_children
from taskfleet.observability.cli import (
    EXIT_DEGRADED,
    EXIT_READY,
    EXIT_UNREACHABLE,
    exit_code,
    serve,
)
from taskfleet.observability.flower_broker import flower_uri
from taskfleet.observability.jobs import JobMetrics
from taskfleet.observability.labels import OTHER_KIND, STATE_LABELS, kind_label, kind_labels
from taskfleet.observability.readiness import Check, Probes
from taskfleet.observability.server import Endpoint, make_server
from taskfleet.tasks.table import JOB_POOLS

LOOPBACK = "127.0.0.1"
MADE_UP_KINDS = 500
CREDENTIALS = b"scraper:pw-for-the-test"


def test_kinds_outside_the_job_table_collapse_into_other() -> None:
    assert kind_label("cpu.checksum") == "cpu.checksum"
    assert kind_label(f"evil.{uuid.uuid4()}") == OTHER_KIND
    assert kind_label(None) == OTHER_KIND


def test_job_series_are_bounded_whatever_kinds_and_states_arrive() -> None:
    """500 made-up kinds and every state: at most (table kinds + other) x (states + other)."""
    metrics = JobMetrics()
    states = [*STATE_LABELS.values(), "other"]
    for index in range(MADE_UP_KINDS):
        kind = kind_label(f"client-{uuid.uuid4()}") if index % 2 else kind_label("io.wait")
        metrics.finished(kind, states[index % len(states)], 0.001)
    series = {
        tuple(sorted(s.labels.items()))
        for family in metrics.jobs.collect()
        for s in family.samples
        if s.name.endswith("_total")
    }
    kinds = {dict(labels)["kind"] for labels in series}
    assert kinds == {"io.wait", OTHER_KIND}
    assert kinds <= set(kind_labels())
    assert len(series) <= (len(JOB_POOLS) + 1) * len(states)


def test_health_exit_code_per_state() -> None:
    ok = Check("redis", True, "")
    assert exit_code([ok, Check("consumers", True, "")]) == EXIT_READY
    assert exit_code([ok, Check("consumers", False, "")]) == EXIT_DEGRADED
    assert exit_code([Check("postgres", False, ""), Check("consumers", False, "")]) == (
        EXIT_UNREACHABLE
    )


@pytest.fixture
def guarded_url() -> Iterator[str]:
    endpoint = Endpoint(CollectorRegistry(), cast(Probes, None), CREDENTIALS)
    server = make_server(endpoint, LOOPBACK, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_basic_auth_guards_every_path(guarded_url: str) -> None:
    for path in ("/metrics", "/healthz", "/readyz"):
        answer = httpx.get(guarded_url + path, timeout=5)
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"].startswith("Basic")
    wrong = httpx.get(f"{guarded_url}/healthz", auth=("scraper", "nope"), timeout=5)
    assert wrong.status_code == 401
    user, password = CREDENTIALS.decode().split(":")
    assert httpx.get(f"{guarded_url}/healthz", auth=(user, password), timeout=5).status_code == 200
    token = base64.b64encode(CREDENTIALS).decode()
    answer = httpx.get(f"{guarded_url}/metrics", headers={"Authorization": f"Basic {token}"})
    assert answer.status_code == 200


def test_credentials_have_no_command_line_option_and_loopback_is_the_default() -> None:
    names = set(serve.__annotations__)
    assert not any("auth" in name or "password" in name for name in names)
    assert DEFAULT_METRICS_HOST == LOOPBACK


def test_up_plans_the_endpoint_and_gives_only_workers_the_metrics_folder(tmp_path: Path) -> None:
    settings = load_settings(cpu_concurrency=1)
    options = FleetOptions(flower=False, metrics=True)
    plan = plan_children(settings, options, broker="redis://x", data_dir=tmp_path, auth=None)
    metrics = next(child for child in plan if child.role == "metrics")
    folder = metrics.extra_env[MULTIPROC_ENV]
    assert metrics.argv[-2:] == ["metrics", "serve"]
    for child in plan:
        if child.role == "worker":
            assert child.extra_env[MULTIPROC_ENV] == folder
        elif child.role != "metrics":
            assert MULTIPROC_ENV not in child.extra_env


class _Conn:
    def __init__(self, uri: str, driver: str, ssl: bool = False) -> None:
        self._uri, self.ssl = uri, ssl
        self.transport = type("T", (), {"driver_type": driver})()

    def as_uri(self, include_password: bool = False) -> str:
        return self._uri


def test_flower_gets_a_redis_scheme_instead_of_the_transport_class_path() -> None:
    """kombu writes a custom transport's class path as the scheme; Flower knows ``redis``."""
    custom = "taskfleet.routing.transport:Transport://:pw@127.0.0.1:6379/0"
    assert flower_uri(_Conn(custom, "redis"), True) == "redis://:pw@127.0.0.1:6379/0"
    assert flower_uri(_Conn(custom, "redis", ssl=True), True).startswith("rediss://")
    assert flower_uri(_Conn("amqp://g@h//", "amqp"), True) == "amqp://g@h//"


def test_the_autoscaler_tick_sends_no_task_events() -> None:
    """Internal jobs stay off Flower's Tasks page."""
    from taskfleet.scheduler.tasks import autoscale_tick

    assert autoscale_tick.send_events is False


def test_start_times_stay_bounded_when_postrun_never_comes() -> None:
    """Jobs that never reach postrun cannot grow the per-process start table without bound."""
    from types import SimpleNamespace

    from taskfleet.observability import jobs

    task = SimpleNamespace(name="cpu.noop", request=SimpleNamespace())
    for index in range(jobs.STARTED_CAP + 5):
        jobs.on_task_prerun(task_id=f"lost-{index}", task=task)
    try:
        assert len(jobs._started) <= jobs.STARTED_CAP
    finally:
        jobs._started.clear()


RECORD_ONE_JOB = (
    "from taskfleet.observability.jobs import job_metrics; "
    "job_metrics().finished('cpu.noop', 'succeeded', 0.01)"
)


def test_worker_files_in_sub_folders_are_summed(tmp_path: Path) -> None:
    """Two processes writing to sub-folders of one folder (containers sharing a volume)."""
    import os
    import subprocess
    import sys

    from taskfleet.observability.server import WorkerFiles

    for sub in ("cpu-worker", "io-worker"):
        env = {**os.environ, MULTIPROC_ENV: str(tmp_path / sub)}
        subprocess.run([sys.executable, "-c", RECORD_ONE_JOB], env=env, check=True, timeout=60)
    samples = {
        (s.name, s.labels.get("kind"), s.labels.get("state")): s.value
        for family in WorkerFiles(str(tmp_path)).collect()
        for s in family.samples
    }
    assert samples[("taskfleet_jobs_total", "cpu.noop", "succeeded")] == 2
    assert samples[("taskfleet_job_run_seconds_count", "cpu.noop", None)] == 2


def test_metrics_credentials_must_be_user_and_password() -> None:
    from taskfleet.config import ConfigError
    from taskfleet.config.observability import load_observability_settings

    assert load_observability_settings(metrics_basic_auth="").metrics_basic_auth is None
    found = load_observability_settings(metrics_basic_auth="a:b").metrics_basic_auth
    assert found is not None
    assert found.get_secret_value() == "a:b"
    for bad in ("nocolon", ":pw", "user:"):
        with pytest.raises(ConfigError, match="METRICS_BASIC_AUTH"):
            load_observability_settings(metrics_basic_auth=bad)
