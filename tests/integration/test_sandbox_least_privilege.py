"""The compose CPU worker's privileges: enough for a sandbox run, and no more needed.

Two ways, without a Docker engine (none runs here):

- **In runc**, Docker's own runtime: an OCI bundle built from the ``cpu-worker`` service of
  docker-compose.yml as Docker builds one (``tests/support/oci.py``): its capabilities,
  no-new-privileges, its seccomp profile file loaded by runc, its sandbox environment,
  Docker's default mounts and masked ``/proc`` paths. A control with the setup calls taken
  out of that profile shows the profile is what allows namespace mode.
- **By hand**: a child process drops to the same privileges itself (root, only the SETUID,
  SETGID and KILL capabilities, bounding set included, no_new_privs, the worker's seccomp
  filter loaded through libseccomp from the same data).

Both run sandbox jobs in namespace mode with an interpreter under /usr like the image's
/usr/local and no fresh /proc (``TASKFLEET_SANDBOX_MOUNT_PROC=false``). Not reproduced:
Docker's AppArmor profile (this kernel has no AppArmor; compose sets it unconfined anyway).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from taskfleet.sandbox import namespaces_available, worker_profile
from tests.support import oci
from tests.support.seccomp_vectors import VECTORS

SYSTEM_PYTHON = Path("/usr/bin/python3")
COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
WORKER_SECCOMP = COMPOSE_FILE.parent / "docker" / "seccomp-cpu-worker.json"
CHILD_TIMEOUT_S = 60.0
UNSHARE = next(v for v in VECTORS if v.name == "unshare_newuser")

DROP_PRIVILEGES = """
import ctypes, json, sys
from taskfleet.sandbox import worker_profile, seccomp_policy
libc = ctypes.CDLL(None, use_errno=True)
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, CAP_LAST = 24, 38, 63
KEEP = (5, 6, 7)  # CAP_KILL, CAP_SETGID, CAP_SETUID
for cap in range(CAP_LAST + 1):
    if cap not in KEEP:
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
class Header(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))
class Data(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32))
mask = sum(1 << cap for cap in KEEP)
assert libc.capset(ctypes.byref(Header(0x20080522, 0)), (Data * 2)(Data(mask, mask, 0))) == 0
assert libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
setup = worker_profile.WORKER_SETUP if sys.argv[4] == "worker" else ()
seccomp_policy.build_filter(seccomp_policy.machine(), setup).load()

"""

RUN_JOBS = """
import json, sys
from taskfleet.config.sandbox import load_sandbox_settings
from taskfleet.sandbox import SandboxExecutor
python = sys.argv[1]
sys.base_prefix = sys.argv[2]  # the image's interpreter lives under a system dir
executor = SandboxExecutor(load_sandbox_settings(), prestart=False)
executor.python = executor.launchers.python = python
out = {"caps": [l for l in open("/proc/self/status") if l.startswith("CapEff")][0].split()[1]}
for name, source in (("hello", "print('hello from the sandbox')"), ("vector", sys.argv[3])):
    result = executor.run({"source": source})
    out[name] = {"status": result.status, "mode": result.mode, "stdout": result.stdout.data,
                 "error": result.error}
out["status"] = dict(l.split(":\\t", 1) for l in open("/proc/self/status").read().splitlines()
                     if l.startswith(("NoNewPrivs", "Seccomp")))
out["status"] = {k: v.strip() for k, v in out["status"].items()}
print(json.dumps(out))
"""
CHILD = DROP_PRIVILEGES + RUN_JOBS


@pytest.fixture(scope="module", autouse=True)
def _needs_root_and_namespaces() -> None:
    if os.geteuid() != 0 or not namespaces_available():
        pytest.skip("needs root and user namespaces (as the compose CPU worker has)")
    if not SYSTEM_PYTHON.exists():
        pytest.skip("no interpreter under /usr to stand in for the image's")


def _image_python() -> tuple[str, str]:
    """An interpreter under /usr (the image's is under /usr/local) and its prefix."""
    python = os.path.realpath(SYSTEM_PYTHON)
    prefix = subprocess.run(
        [python, "-c", "import sys; print(sys.base_prefix)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return python, prefix


def _run_child(profile: str) -> dict[str, Any]:
    python, prefix = _image_python()
    child = subprocess.run(
        [sys.executable, "-c", CHILD, python, prefix, UNSHARE.source(), profile],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
        env=os.environ | {"TASKFLEET_SANDBOX_MOUNT_PROC": "false"},
    )
    assert child.returncode == 0, child.stderr[-2000:]
    return dict(json.loads(child.stdout))


def _assert_namespace_mode_works(seen: dict[str, Any]) -> None:
    assert int(seen["caps"], 16) == (1 << 5) | (1 << 6) | (1 << 7)
    assert seen["hello"] == {
        "status": "succeeded",
        "mode": "namespaces",
        "stdout": "hello from the sandbox\n",
        "error": None,
    }
    # The worker may unshare; the program it runs still may not.
    assert seen["vector"]["status"] == "succeeded", seen["vector"]
    assert json.loads(seen["vector"]["stdout"]) == {"ret": -1, "errno": UNSHARE.refused_with}


def test_the_compose_worker_privileges_suffice_for_namespace_mode() -> None:
    _assert_namespace_mode_works(_run_child("worker"))


def _run_in_runc(spec: dict[str, Any], base: Path, bundle: Path) -> dict[str, Any]:
    """RUN_JOBS in runc under compose service ``spec``; what it printed."""
    if not oci.available():
        reason = "needs runc (Debian package; `make test-tools` installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    python, prefix = _image_python()
    argv = [sys.executable, "-c", RUN_JOBS, python, prefix, UNSHARE.source()]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": oci.SCRATCH, "TMPDIR": oci.SCRATCH}
    container = oci.run_bundle(oci.bundle_for(spec, base, bundle, argv, env), CHILD_TIMEOUT_S)
    assert container.returncode == 0, container.stderr[-3000:]
    return dict(json.loads(container.stdout))


def test_the_compose_cpu_worker_runs_sandbox_jobs_in_docker_s_runtime(tmp_path: Path) -> None:
    # The same jobs in runc (what Docker runs containers with), configured from the
    # cpu-worker service of docker-compose.yml: its capabilities, no-new-privileges, its
    # seccomp profile file, its environment, Docker's masked /proc paths.
    seen = _run_in_runc(oci.service(COMPOSE_FILE, "cpu-worker"), COMPOSE_FILE.parent, tmp_path)
    _assert_namespace_mode_works(seen)
    status = seen["status"]
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2", "runc loaded the compose file's seccomp profile"


def test_in_docker_s_runtime_a_profile_without_the_setup_calls_is_refused(
    tmp_path: Path,
) -> None:
    # Control: the compose profile less the calls that build a sandbox, loaded by runc.
    profile = json.loads(WORKER_SECCOMP.read_text())
    for rule in profile["syscalls"]:
        rule["names"] = [n for n in rule["names"] if n not in worker_profile.WORKER_SETUP]
    (tmp_path / "profile.json").write_text(json.dumps(profile))
    spec = oci.service(COMPOSE_FILE, "cpu-worker")
    spec["security_opt"] = [
        f"seccomp={tmp_path / 'profile.json'}" if str(o).startswith("seccomp") else o
        for o in spec["security_opt"]
    ]
    seen = _run_in_runc(spec, tmp_path, tmp_path / "bundle")
    assert seen["hello"]["status"] == "rejected"
    assert "does not let the worker unshare" in seen["hello"]["error"]


def test_without_the_setup_calls_namespace_mode_is_refused_with_the_reason() -> None:
    # Control: the sandbox's own policy as the worker's profile (no unshare, no mount).
    seen = _run_child("sandbox")
    assert seen["hello"]["status"] == "rejected"
    assert "does not let the worker unshare" in seen["hello"]["error"]
