"""The seccomp filter from inside real sandbox runs: every vector refused, the worker unharmed.

Each vector runs through a real CPU worker (``sandbox.run``, the path producers use), then a
normal run must succeed on the same worker process. A control runs the same programs with an
allow-everything filter swapped in (test-only, in-process): there each call succeeds or fails
differently, so it is the filter that refused, not a missing capability.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pyseccomp
import pytest

import taskfleet.tasks.sandbox_jobs  # noqa: F401 - registers sandbox.run for the client's router
from taskfleet.sandbox import SandboxExecutor
from taskfleet.sandbox import executor as executor_module
from tests.support.sandbox_fleet import job_runner, require_namespaces
from tests.support.sandbox_fleet import sandbox_fleet as sandbox_fleet_of
from tests.support.seccomp_vectors import (
    VECTORS,
    X32_SYSCALL_BIT,
    Vector,
    outcome,
    syscall_number,
)
from tests.support.workers import Fleet

#: Refused with EPERM without the filter too: the program holds no capability.
CAPABILITY_GATED = {"pivot_root", "clone_newns", "reboot", "swapoff", "acct"}
#: The control filter itself refuses foreign ABIs (libseccomp's bad-arch action).
NO_CONTROL = {"x32_abi"}
IS_X86_64 = os.uname().machine == "x86_64"


@pytest.fixture(scope="module", autouse=True)
def _namespaces() -> None:
    require_namespaces()


@pytest.fixture(scope="module")
def sandbox_fleet(
    redis_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    with sandbox_fleet_of(redis_env, tmp_path_factory.mktemp("seccomp-fleet")) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def run_job(sandbox_fleet: Fleet) -> Callable[[str], dict[str, Any]]:
    """Run one program through sandbox.run; wait until no sandbox process is left."""
    run = job_runner(sandbox_fleet)
    return lambda source: run({"source": source, "limits": {"wall_time_s": 10}})


def _number(vector: Vector) -> int:
    number = syscall_number(vector.syscall)
    return number | X32_SYSCALL_BIT if vector.name == "x32_abi" else number


def _applicable(vector: Vector) -> Any:
    marks = [pytest.mark.skipif(not IS_X86_64, reason="x86_64 ABI")] if vector.x86_64_only else []
    return pytest.param(vector, id=vector.name, marks=marks)


@pytest.mark.parametrize("vector", [_applicable(v) for v in VECTORS])
def test_vector_is_refused_and_the_worker_stays_healthy(
    vector: Vector, run_job: Callable[[str], dict[str, Any]], sandbox_fleet: Fleet
) -> None:
    pid = sandbox_fleet.procs["cpu"].pid
    result = run_job(vector.source(_number(vector)))
    assert result["status"] == "succeeded", result
    assert outcome(result["stdout"]["data"]) == (-1, vector.refused_with), result
    after = run_job("print('still here')")
    assert after["status"] == "succeeded", after
    assert after["stdout"]["data"] == "still here\n"
    assert sandbox_fleet.procs["cpu"].poll() is None
    assert sandbox_fleet.procs["cpu"].pid == pid


def test_the_program_runs_filtered_and_ordinary_code_still_works(
    run_job: Callable[[str], dict[str, Any]],
) -> None:
    source = """
import ctypes, os, subprocess, sys, threading
status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines())
libc = ctypes.CDLL(None, use_errno=True)
thread = threading.Thread(target=lambda: None)
thread.start()
thread.join()
child = subprocess.run([sys.executable, "-c", "print('child')"], capture_output=True, text=True)
pid = os.fork()
if pid == 0:
    os._exit(7)
print(status["Seccomp"], status["NoNewPrivs"], child.stdout.strip(),
      os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]),
      libc.personality(ctypes.c_ulong(0xFFFFFFFF)), libc.personality(ctypes.c_ulong(0)))
"""
    result = run_job(source)
    assert result["status"] == "succeeded", result
    # Seccomp 2: filter mode, inherited by the subprocess (it printed) and the fork.
    assert result["stdout"]["data"].split() == ["2", "1", "child", "7", "0", "0"]


def _allow_everything() -> bytes:
    with tempfile.TemporaryFile() as out:
        pyseccomp.SyscallFilter(pyseccomp.ALLOW).export_bpf(out)
        out.seek(0)
        return out.read()


@pytest.fixture(scope="module")
def unfiltered_executor() -> Iterator[SandboxExecutor]:
    """A sandbox executor in this process whose launchers load an allow-everything filter."""
    program = _allow_everything()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(executor_module, "compile_filter", lambda: program)
        executor = SandboxExecutor()
        try:
            yield executor
        finally:
            executor.close()


@pytest.mark.parametrize(
    "vector",
    [_applicable(v) for v in VECTORS if v.name not in CAPABILITY_GATED | NO_CONTROL],
)
def test_without_the_filter_the_kernel_answers_otherwise(
    vector: Vector, unfiltered_executor: SandboxExecutor
) -> None:
    result = unfiltered_executor.run({"source": vector.source(_number(vector))})
    assert result.status == "succeeded", result
    ret, err = outcome(result.stdout.data)
    assert ret >= 0 or err != vector.refused_with, (vector.name, ret, errno.errorcode[err])
