"""The compose CPU worker's privileges, reproduced without Docker: enough for a sandbox run.

A child process drops to what docker-compose.yml gives the CPU worker: root, only the
SETUID, SETGID and KILL capabilities (bounding set included), no_new_privs, and the worker's
seccomp profile (docker/seccomp-cpu-worker.json, loaded here through libseccomp from the same
data), with an interpreter under /usr like the image's /usr/local and no fresh /proc
(``TASKFLEET_SANDBOX_MOUNT_PROC=false``). It then runs sandbox jobs in namespace mode. Not
reproduced: Docker itself, its AppArmor profile, its masked /proc paths.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from taskfleet.sandbox import namespaces_available
from tests.support.seccomp_vectors import VECTORS

SYSTEM_PYTHON = Path("/usr/bin/python3")
CHILD_TIMEOUT_S = 60.0
UNSHARE = next(v for v in VECTORS if v.name == "unshare_newuser")

CHILD = """
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

from taskfleet.config.sandbox import load_sandbox_settings
from taskfleet.sandbox import SandboxExecutor
python = sys.argv[1]
sys.base_prefix = sys.argv[2]  # the image's interpreter lives under a system dir
executor = SandboxExecutor(load_sandbox_settings(mount_proc=False), prestart=False)
executor.python = executor.launchers.python = python
out = {"caps": [l for l in open("/proc/self/status") if l.startswith("CapEff")][0].split()[1]}
for name, source in (("hello", "print('hello from the sandbox')"), ("vector", sys.argv[3])):
    result = executor.run({"source": source})
    out[name] = {"status": result.status, "mode": result.mode, "stdout": result.stdout.data,
                 "error": result.error}
print(json.dumps(out))
"""


@pytest.fixture(scope="module", autouse=True)
def _needs_root_and_namespaces() -> None:
    if os.geteuid() != 0 or not namespaces_available():
        pytest.skip("needs root and user namespaces (as the compose CPU worker has)")
    if not SYSTEM_PYTHON.exists():
        pytest.skip("no interpreter under /usr to stand in for the image's")


def _run_child(profile: str) -> dict[str, Any]:
    python = os.path.realpath(SYSTEM_PYTHON)
    prefix = subprocess.run(
        [python, "-c", "import sys; print(sys.base_prefix)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    child = subprocess.run(
        [sys.executable, "-c", CHILD, python, prefix, UNSHARE.source(), profile],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    return dict(json.loads(child.stdout))


def test_the_compose_worker_privileges_suffice_for_namespace_mode() -> None:
    seen = _run_child("worker")
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


def test_without_the_setup_calls_namespace_mode_is_refused_with_the_reason() -> None:
    # Control: the sandbox's own policy as the worker's profile (no unshare, no mount).
    seen = _run_child("sandbox")
    assert seen["hello"]["status"] == "rejected"
    assert "does not let the worker unshare" in seen["hello"]["error"]
