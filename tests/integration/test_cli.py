"""End-to-end tests of the ``taskfleet`` command line, each on a fresh embedded stack.

No service URLs are set: every test gets its own data folder, so the embedded Redis and
PostgreSQL start from nothing (the fresh-machine path) and are destroyed afterwards. The
CLI runs as a real subprocess, exactly as an operator runs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import pytest
import redis

from taskfleet.config import load_settings
from taskfleet.devstack import EmbeddedStack
from taskfleet.fleet import Fleet, FleetOptions
from taskfleet.workers.main import MODULE as WORKER_MAIN
from tests.support.fleets import started_fleet
from tests.support.workers import is_cpu_node, kill_tree

CLI = [sys.executable, "-m", "taskfleet.cli"]
CLI_TIMEOUT_S = 60
DEMO_JOBS = 300
#: Well inside the test timeout, so a stuck demo fails with its own output (it takes ~10 s).
DEMO_TIMEOUT_S = 150
#: How much of the broker's state and the logs a stuck demo's failure shows.
STATE_ENTRIES = 20
STATE_CHARS = 3000
STATE_LOG_LINES = 40
FLEET_READY_TIMEOUT_S = 60
EXIT_USAGE = 2


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh data folder, with no TASKFLEET_* setting but it inherited from outside."""
    for name in [n for n in os.environ if n.startswith("TASKFLEET_")]:
        monkeypatch.delenv(name)
    path = tmp_path / "data"
    monkeypatch.setenv("TASKFLEET_DATA_DIR", str(path))
    yield path
    EmbeddedStack(path).destroy()


@pytest.fixture
def fleet(data_dir: Path) -> Iterator[Fleet]:
    """A small running fleet (no Flower, no beat) on the fresh embedded stack."""
    settings = load_settings(data_dir=str(data_dir), _env_file=None)
    options = FleetOptions(cpu_concurrency=1, io_concurrency=4, flower=False, beat=False)
    with started_fleet(settings, options, FLEET_READY_TIMEOUT_S) as running:
        yield running
    assert running.stack_stopped


def run_cli(
    *args: str, cwd: Path, timeout: float = CLI_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run ``taskfleet ARGS`` in ``cwd`` (so no stray ``.env`` is read).

    On timeout the raised ``TimeoutExpired`` carries, in ``stderr``, the Python stacks of
    the CLI and everything it started (when py-spy is installed), then the tree is killed.
    """
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONIOENCODING": "utf-8"}
    with subprocess.Popen(
        [*CLI, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            stacks = stacks_of_tree(proc.pid)
            kill_tree(proc.pid)
            stdout, stderr = proc.communicate()
            raise subprocess.TimeoutExpired(
                exc.cmd, timeout, output=stdout, stderr=f"{stderr}\n{stacks}"
            ) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def stacks_of_tree(pid: int) -> str:
    """Python stacks of ``pid`` and its descendants, for a test that found them stuck."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        return "(install py-spy to see where the processes were stuck)"
    dumps = []
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            done = subprocess.run(
                [py_spy, "dump", "--pid", str(proc.pid)],
                capture_output=True,
                text=True,
                timeout=CLI_TIMEOUT_S,
                check=False,
            )
            dumps.append(f"--- {proc.pid} {' '.join(proc.cmdline())}\n{done.stdout}{done.stderr}")
        except (psutil.Error, subprocess.TimeoutExpired) as exc:
            dumps.append(f"--- {proc.pid}: {exc!r}")
    return "\n".join(dumps)


def expected_checksum(payload: dict[str, Any]) -> str:
    """What ``cpu.checksum`` computes, independently of its implementation."""
    digest = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    for _ in range(payload["rounds"]):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


def processes_of(data_dir: Path) -> list[str]:
    """Live processes started for ``data_dir``: they carry it in their environment or cwd."""
    target = str(data_dir)
    me = os.getpid()
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid == me:
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            mine = proc.environ().get("TASKFLEET_DATA_DIR") == target
            mine = mine or proc.cwd().startswith(target)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if mine:
            found.append(f"{proc.pid}: {' '.join(proc.info['cmdline'] or [])}")
    return found


def broker_state(data_dir: Path) -> str:
    """The embedded Redis's keys (but results) with their first entries, and the worker logs'
    warnings, errors and last lines: where a stuck demo's jobs are, and why."""
    lines = []
    url = EmbeddedStack(data_dir).status()["redis"]["url"]  # type: ignore[index]
    if url:
        client = redis.Redis.from_url(str(url))
        readers: dict[str, Callable[[bytes], object]] = {
            "list": lambda k: client.lrange(k, 0, STATE_ENTRIES),
            "hash": lambda k: list(client.hgetall(k).items())[:STATE_ENTRIES],
            "zset": lambda k: client.zrange(k, 0, STATE_ENTRIES, withscores=True),
            "string": client.get,
        }
        for key in sorted(client.scan_iter(count=1000)):
            if not key.startswith(b"celery-task-meta-"):
                kind = client.type(key).decode()
                read = readers.get(kind, lambda _: "")
                lines.append(f"{key!r} {kind} {str(read(key))[:STATE_CHARS]}")
    for log in sorted((data_dir / "logs").glob("*.log")):
        text = log.read_text(errors="replace").splitlines()
        lines.append(f"--- {log.name}")
        lines.extend(x for x in text if re.search(r": (WARNING|ERROR|CRITICAL)/", x))
        lines.append("...")
        lines.extend(text[-STATE_LOG_LINES:])
    return "\n".join(lines)


def _celery_descendants() -> set[int]:
    """Pids of this test process's descendants running celery (a worker started through
    ``taskfleet.workers.main`` included)."""
    found = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(proc.cmdline())
            if "celery" in cmdline or WORKER_MAIN in cmdline:
                found.add(proc.pid)
        except psutil.Error:
            continue  # exited meanwhile
    return found


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_loses_no_job_and_leaves_nothing_running(data_dir: Path) -> None:
    before = _celery_descendants()  # a session fixture's fleet may be running: not the demo's
    try:
        done = run_cli(
            "demo",
            "--jobs",
            str(DEMO_JOBS),
            "--seed",
            "7",
            cwd=data_dir.parent,
            timeout=DEMO_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        output = f"{exc.stdout or ''}{exc.stderr or ''}"
        pytest.fail(
            f"demo still running after {DEMO_TIMEOUT_S}s; its output:\n{output}\n"
            f"processes left: {processes_of(data_dir)}\n{broker_state(data_dir)}"
        )

    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert re.search(r"^\W*lost\s*[│|]\s*0\s*[│|]", done.stdout, re.MULTILINE), output
    verdict = re.search(r"^demo: OK .*$", done.stdout, re.MULTILINE)
    assert verdict is not None, output
    assert f"sent={DEMO_JOBS} " in verdict.group()
    assert " lost=0 " in verdict.group()
    pg = re.search(r"pg_rows=(\d+)/(\d+)", verdict.group())
    assert pg is not None
    assert pg.group(1) == pg.group(2) != "0"
    # The demo stopped its workers, their pools and persisters, and the stack it started.
    assert processes_of(data_dir) == []
    assert _celery_descendants() - before == set()
    status = EmbeddedStack(data_dir).status()
    assert not status["redis"]["running"]  # type: ignore[index]
    assert not status["postgres"]["running"]  # type: ignore[index]


@pytest.mark.slow
def test_submit_wait_prints_the_checksum_and_status_reads_it(fleet: Fleet, data_dir: Path) -> None:
    payload = {"rounds": 3}

    done = run_cli(
        "submit", "cpu.checksum", json.dumps(payload), "--wait", "--priority", "high",
        cwd=data_dir.parent,
    )  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    job_id, *result_lines = done.stdout.splitlines()
    result = json.loads("\n".join(result_lines))
    assert result == {"sha256": expected_checksum(payload), "rounds": 3}

    status = run_cli("status", job_id, "--json", cwd=data_dir.parent)
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["state"] == "SUCCESS"
    assert info["result"]["sha256"] == expected_checksum(payload)
    assert is_cpu_node(info["worker"])
    assert info["date_done"]


@pytest.mark.slow
def test_submit_wait_reports_a_failed_job(fleet: Fleet, data_dir: Path) -> None:
    done = run_cli("submit", "cpu.checksum", '{"rounds": 0}', "--wait", cwd=data_dir.parent)

    assert done.returncode == 1
    assert "ValueError" in done.stderr
    assert "rounds must be" in done.stderr
    assert "Traceback" not in done.stderr


def test_submit_unknown_kind_fails_before_touching_services(data_dir: Path) -> None:
    done = run_cli("submit", "no.such.kind", "{}", cwd=data_dir.parent)

    assert done.returncode == EXIT_USAGE
    assert "no.such.kind" in done.stderr
    assert "Traceback" not in done.stderr
    assert not data_dir.exists()  # rejected before the embedded stack was started


@pytest.mark.parametrize("priority", ["urgent", "12"])
def test_submit_bad_priority_fails_with_a_clear_message(data_dir: Path, priority: str) -> None:
    done = run_cli("submit", "cpu.noop", "--priority", priority, cwd=data_dir.parent)

    assert done.returncode == EXIT_USAGE
    assert priority in done.stderr
    assert "priority" in done.stderr
    assert "Traceback" not in done.stderr
    assert not data_dir.exists()


def test_submit_bad_json_fails_with_a_clear_message(data_dir: Path) -> None:
    done = run_cli("submit", "cpu.noop", "{not json", cwd=data_dir.parent)

    assert done.returncode == EXIT_USAGE
    assert "not valid JSON" in done.stderr
    assert "Traceback" not in done.stderr


def test_config_error_is_one_red_line_and_exit_2(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKFLEET_CPU_QUEUE", "io")

    done = run_cli("status", "some-id", cwd=data_dir.parent)

    assert done.returncode == EXIT_USAGE
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "TASKFLEET_CPU_QUEUE" in done.stderr
    assert "Traceback" not in done.stderr
