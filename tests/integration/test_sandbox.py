"""Sandbox jobs through a real CPU worker: every bad input ends cleanly, nothing survives it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import taskfleet.tasks.sandbox_jobs  # noqa: F401 - registers sandbox.run for the client's router
from taskfleet.config.sandbox import get_sandbox_settings, load_sandbox_settings
from taskfleet.sandbox import SandboxExecutor
from taskfleet.sandbox.isolation import sandbox_processes
from taskfleet.sandbox.limits import resolve_limits
from tests.support.sandbox_fleet import CLEANUP_TIMEOUT_S, job_runner, require_namespaces
from tests.support.sandbox_fleet import sandbox_fleet as sandbox_fleet_of
from tests.support.waiting import wait_for
from tests.support.workers import Fleet

REPO = Path(__file__).resolve().parents[2]
#: Wall limit of the rlimits-only run: far above the program's own run time.
RLIMITS_WALL_S = 60


@pytest.fixture(scope="module", autouse=True)
def _namespaces() -> None:
    require_namespaces()


@pytest.fixture(scope="module")
def sandbox_fleet(
    redis_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    canary = {"TASKFLEET_SECRET_CANARY": f"canary-{uuid.uuid4().hex[:8]}"}
    with sandbox_fleet_of(redis_env, tmp_path_factory.mktemp("sandbox-fleet"), canary) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def run_job(sandbox_fleet: Fleet) -> Callable[..., dict[str, Any]]:
    return job_runner(sandbox_fleet)


def _worker_tree(fleet: Fleet) -> int:
    worker = psutil.Process(fleet.procs["cpu"].pid)
    return 1 + len(worker.children(recursive=True))


def _payload(source: str, **limits: float) -> dict[str, Any]:
    return {"source": source, "stdin": None, "limits": limits}


def test_runs_code_with_stdin_and_reports_usage(run_job: Callable[..., dict[str, Any]]) -> None:
    result = run_job(
        {"source": "import sys\nprint(sys.stdin.read().upper())", "stdin": "héllo", "limits": {}}
    )
    assert result["status"] == "succeeded", result
    assert result["mode"] == "namespaces"
    assert result["stdout"] == {
        "data": "HÉLLO\n",
        "encoding": "utf-8",
        "bytes_seen": 7,
        "truncated": False,
    }
    assert result["exit_code"] == 0
    assert result["signal"] is None
    assert result["limit"] is None
    assert result["wall_time_s"] > 0
    assert result["cpu_time_s"] > 0
    assert result["peak_memory_bytes"] > 1024 * 1024
    assert result["limits"]["wall_time_s"] == get_sandbox_settings().default_wall_time_s
    # No delegated cgroup v2 here: the result says the limits bind each process only.
    assert result["limits_scope"] == "per_process"
    assert result["limits_note"].startswith("limits are per process only")
    assert "TASKFLEET_SANDBOX_CGROUP_ROOT" in result["limits_note"]


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ({"source": 5}, "source"),
        ("not an object", "payload"),
        (_payload("pass", wall_time_s=10_000), "wall_time_s: 10000.0 is above the ceiling"),
        (_payload("pass", cores=2), "unknown limit"),
        ({"source": "pass", "extra": 1}, "extra"),
    ],
)
def test_bad_payload_gives_a_rejected_result(
    run_job: Callable[..., dict[str, Any]], payload: Any, needle: str
) -> None:
    result = run_job(payload)
    assert result["status"] == "rejected"
    assert needle in result["error"]
    assert result["exit_code"] is None
    assert result["stdout"]["bytes_seen"] == 0


LIMIT_CASES = [
    ("fork_bomb", "import os\nwhile True:\n    os.fork()", {"processes": 16}, "processes"),
    ("memory_bomb", "bytearray(10**11)", {}, "memory"),
    ("busy_loop", "while True: pass", {"cpu_time_s": 1}, "cpu_time"),
    ("sleep_forever", "import time\ntime.sleep(10**9)", {"wall_time_s": 1}, "wall_time"),
    (
        "ignores_sigterm",
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(10**9)",
        {"wall_time_s": 1},
        "wall_time",
    ),
    (
        "one_gigabyte_of_stdout",
        "import sys\nb = b'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.buffer.write(b)",
        {"output_bytes": 65536},
        "output",
    ),
    (
        "big_file",
        "open('f', 'wb').write(b'x' * (2 << 20))",
        {"file_size_bytes": 1 << 20},
        "file_size",
    ),
    (
        "many_files",
        "fs = [open('/dev/null') for _ in range(100)]",
        {"open_files": 32},
        "open_files",
    ),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("source", "limits", "limit"), [c[1:] for c in LIMIT_CASES], ids=[c[0] for c in LIMIT_CASES]
)
def test_limits_stop_bad_programs(
    run_job: Callable[..., dict[str, Any]], source: str, limits: dict[str, float], limit: str
) -> None:
    result = run_job(_payload(source, **limits))
    assert result["status"] == "limit_exceeded", result
    assert result["limit"] == limit
    assert limit in result["error"]
    assert result["wall_time_s"] < get_sandbox_settings().default_wall_time_s
    if limit == "output":
        assert result["stdout"]["truncated"]
        assert result["stdout"]["bytes_seen"] > 65536
        assert len(result["stdout"]["data"]) == 65536
    if limit == "cpu_time":
        assert result["signal"] == "SIGXCPU"


def _probe(run_job: Callable[..., dict[str, Any]], source: str) -> dict[str, Any]:
    """Run a probe that prints one JSON object; return it."""
    result = run_job(_payload(source))
    assert result["status"] == "succeeded", result
    return dict(json.loads(result["stdout"]["data"]))


def test_filesystem_is_private(run_job: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    source = f"""
import json, os
out = {{}}
for path in ("/etc/x", "/usr/x", "/tmp/x", "/x", "/root/x", {str(REPO / "x")!r}):
    try:
        open(path, "w").write("x")
        out[path] = "written"
    except OSError as exc:
        out[path] = type(exc).__name__
for name, target in (("repo", {str(REPO)!r}), ("secret", {str(secret)!r}), ("home", "/root")):
    os.symlink(target, name)
    try:
        out[name] = os.listdir(name) if os.path.isdir(name) else open(name).read()
    except OSError as exc:
        out[name] = type(exc).__name__
out["cwd"] = os.getcwd()
out["cwd_entries"] = sorted(e for e in os.listdir(".") if e not in ("repo", "secret", "home"))
print(json.dumps(out))
"""
    seen = _probe(run_job, source)
    for path in ("/etc/x", "/usr/x", "/tmp/x", "/x", "/root/x", str(REPO / "x")):
        assert seen[path] != "written", path
    assert not (REPO / "x").exists()
    assert seen["repo"] == "FileNotFoundError"
    assert seen["secret"] == "FileNotFoundError"
    assert seen["home"] == [".pyenv"] or seen["home"] == "FileNotFoundError"
    assert seen["cwd"] == "/sandbox"
    assert seen["cwd_entries"] == []


def test_environment_and_proc_hide_the_worker(run_job: Callable[..., dict[str, Any]]) -> None:
    source = """
import json, os
out = {"env": dict(os.environ), "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())}
readable = []
for pid in out["pids"]:
    try:
        readable.append(open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace"))
    except OSError:
        pass
out["environ"] = readable
out["fds"] = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
out["uid"] = os.getuid()
print(json.dumps(out))
"""
    seen = _probe(run_job, source)
    assert not any(key.startswith("TASKFLEET") for key in seen["env"])
    assert set(seen["env"]) == {"PATH", "HOME", "TMPDIR", "LANG"}
    assert not any("TASKFLEET" in text or "canary-" in text for text in seen["environ"])
    assert max(seen["pids"]) < 100, "host processes visible"
    assert seen["fds"][:3] == [0, 1, 2]
    assert len(seen["fds"]) == 4
    assert seen["uid"] != 0


def test_no_network_at_all(run_job: Callable[..., dict[str, Any]]) -> None:
    # Connects only if the namespace has no interface but lo: nothing can leave the machine.
    source = """
import json, socket
out = {"interfaces": [name for _, name in socket.if_nameindex()]}
if out["interfaces"] == ["lo"]:
    for name, address in (("redis", ("127.0.0.1", 6379)), ("public", ("1.1.1.1", 80))):
        try:
            socket.create_connection(address, timeout=2).close()
            out[name] = "connected"
        except OSError as exc:
            out[name] = exc.errno
    try:
        socket.getaddrinfo("example.com", 80)
        out["dns"] = "resolved"
    except socket.gaierror as exc:
        out["dns"] = "gaierror"
print(json.dumps(out))
"""
    seen = _probe(run_job, source)
    assert seen["interfaces"] == ["lo"]
    assert seen["redis"] == 101
    assert seen["public"] == 101
    assert seen["dns"] == "gaierror"


def test_setsid_grandchild_does_not_outlive_the_job(
    run_job: Callable[..., dict[str, Any]], sandbox_fleet: Fleet
) -> None:
    run_job(_payload("pass"))  # the worker's launcher is warm
    before = _worker_tree(sandbox_fleet)
    source = (
        "import os, subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(1000)'],"
        " start_new_session=True)\n"
        "print(child.pid)\n"
    )
    result = run_job(_payload(source))  # run_job waits for zero sandbox processes on the host
    assert result["status"] == "succeeded"
    assert result["stdout"]["data"].strip().isdigit()
    assert _worker_tree(sandbox_fleet) == before


def test_odd_output_and_bad_source(run_job: Callable[..., dict[str, Any]]) -> None:
    binary = run_job(_payload("import sys\nsys.stdout.buffer.write(b'\\xff\\xfe ok')"))
    assert binary["status"] == "succeeded"
    assert binary["stdout"] == {
        "data": "//4gb2s=",
        "encoding": "base64",
        "bytes_seen": 5,
        "truncated": False,
    }
    broken = run_job(_payload("def (:"))
    assert broken["status"] == "failed"
    assert broken["exit_code"] == 1
    assert broken["error"].startswith("SyntaxError")


def test_worker_survives_every_bad_input(
    run_job: Callable[..., dict[str, Any]], sandbox_fleet: Fleet
) -> None:
    pid = sandbox_fleet.procs["cpu"].pid
    run_job(_payload("pass"))
    before = _worker_tree(sandbox_fleet)
    for _, source, limits, _ in LIMIT_CASES[:2]:
        run_job(_payload(source, **limits))
    after = run_job(_payload("print('still here')"))
    assert after["stdout"]["data"] == "still here\n"
    assert sandbox_fleet.procs["cpu"].poll() is None
    assert sandbox_fleet.procs["cpu"].pid == pid
    assert _worker_tree(sandbox_fleet) == before


def test_each_run_gets_a_fresh_work_dir() -> None:
    executor = SandboxExecutor()
    try:
        first = executor.run(_payload("open('left-behind', 'w').write('x')\nprint('wrote')"))
        second = executor.run(_payload("import os\nprint(os.listdir('.'))"))
    finally:
        executor.close()
    assert first.status == "succeeded"
    assert first.stdout.data == "wrote\n"
    assert second.stdout.data == "[]\n"


def test_rlimits_only_mode_when_the_operator_allows_it() -> None:
    settings = load_sandbox_settings(allow_degraded=True)
    executor = SandboxExecutor(settings)
    source = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    time.sleep(1000)\n"
        "print(os.getuid(), sorted(os.environ))\n"
    )
    try:
        limits = resolve_limits({"wall_time_s": RLIMITS_WALL_S}, settings)
        result = executor.run_checked(source, None, limits, "rlimits_only")
    finally:
        executor.close()
    assert result.mode == "rlimits_only"
    assert result.status == "succeeded", result
    uid, env = result.stdout.data.split(" ", 1)
    assert int(uid) >= settings.uid_base
    assert env.strip() == "['HOME', 'LANG', 'PATH', 'TMPDIR']"
    # Returned when the program did, not when its detached grandchild (1000 s) or the limit would.
    assert result.wall_time_s < RLIMITS_WALL_S
    wait_for(lambda: not sandbox_processes(settings), CLEANUP_TIMEOUT_S, "no orphan left")


def test_an_unusable_cgroup_root_gives_per_process_limits_and_says_why() -> None:
    # The real cgroup filesystem: a v2 directory without the memory/pids/cpu controllers
    # (this host's v1 holds them), or one that does not exist.
    root = "/sys/fs/cgroup/unified"
    if not Path(root, "cgroup.controllers").is_file():
        root = "/nonexistent-cgroup"
    executor = SandboxExecutor(load_sandbox_settings(cgroup_root=root))
    try:
        result = executor.run(_payload("print('ran')"))
    finally:
        executor.close()
    assert result.status == "succeeded", result
    assert result.stdout.data == "ran\n"
    assert result.limits_scope == "per_process"
    assert result.limits_note is not None
    assert root in result.limits_note


def test_without_a_proc_mount_runs_still_work_and_see_no_proc() -> None:
    # TASKFLEET_SANDBOX_MOUNT_PROC=false: what the compose CPU worker uses (Docker masks paths
    # under its /proc, and the kernel then refuses a fresh procfs to a user namespace).
    executor = SandboxExecutor(load_sandbox_settings(mount_proc=False))
    source = (
        "import os, subprocess, sys\n"
        "child = subprocess.run([sys.executable, '-c', 'print(1)'], capture_output=True)\n"
        "print(os.listdir('/proc'), child.stdout.decode().strip())\n"
    )
    try:
        result = executor.run(_payload(source))
    finally:
        executor.close()
    assert result.status == "succeeded", result
    assert result.stdout.data == "[] 1\n"
