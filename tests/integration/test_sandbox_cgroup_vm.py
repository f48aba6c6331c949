"""Whole-run sandbox limits on a real cgroup v2 kernel, in a VM (``tests/support/vm.py``).

This machine's memory, pids and cpu controllers are held by cgroup v1, so the host can only
show that runs fall back to per-process limits and say so (``test_sandbox_cgroups``). Here
the same checkout runs in a QEMU guest whose kernel has cgroup v2 alone, with a delegated
``TASKFLEET_SANDBOX_CGROUP_ROOT``, and the kernel enforces the limits
(``tests/support/vm_guest_sandbox.py`` runs the cases; this module judges them).
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from tests.conftest import EARLY_VM
from tests.support import vm

#: Boot and five sandbox runs take about 30 s under software emulation on an idle machine;
#: started early and niced (conftest), the VM may take longer but is done before it is needed.
VM_TIMEOUT_S = 900.0
#: cpu.max is enforced per 100 ms period: allow a few periods and the interpreter's exit.
CPU_SLACK_S = 0.5

pytestmark = [pytest.mark.slow, pytest.mark.timeout(VM_TIMEOUT_S + 60)]


@pytest.fixture(scope="module")
def report(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    absent = vm.missing()
    if absent:
        reason = f"the cgroup v2 VM needs {', '.join(absent)} (Debian packages; `make test-tools`)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    run = request.config.stash.get(EARLY_VM, None)  # started at collection (conftest)
    if run is None:
        run = vm.start_sandbox_cases(tmp_path_factory.mktemp("vm"))
    result = run.wait(VM_TIMEOUT_S)
    assert result.returncode == 0, result.console[-6000:]
    return dict(json.loads((result.share / "results.json").read_text()))


def _case(report: dict[str, Any], name: str) -> dict[str, Any]:
    case = report["cases"][name]
    assert case["limits_scope"] == "whole_run", case
    return dict(case)


def test_the_guest_has_a_delegated_cgroup_and_runs_say_so(report: dict[str, Any]) -> None:
    assert report["note"].startswith("whole-run limits: memory, pids and cpu per run")
    first = _case(report, "first_ok")
    assert first["status"] == "succeeded", first
    assert first["stdout"]["data"] == "hello\n"
    assert first["limits_note"] == report["note"]


def test_memory_is_bounded_for_the_whole_run(report: dict[str, Any]) -> None:
    # Six processes of 64 MiB: each is under its own 128 MiB rlimit, the run is not.
    case = _case(report, "memory_across_processes")
    assert case["status"] == "limit_exceeded", case
    assert case["limit"] == "memory"
    assert "memory" in case["error"]
    assert "all six" not in case["stdout"]["data"]


def test_processes_are_bounded_for_the_whole_run(report: dict[str, Any]) -> None:
    case = _case(report, "fork_bomb")
    assert case["status"] == "limit_exceeded", case
    assert case["limit"] == "processes"


def test_cpu_is_capped_for_the_whole_run(report: dict[str, Any]) -> None:
    # Four busy processes on a two-CPU guest would use about 2 CPU-seconds per second.
    case = _case(report, "cpu_hog")
    assert case["status"] == "succeeded", case
    assert case["stdout"]["data"] == "done\n"
    cap = report["run_cpus"] * case["wall_time_s"] + CPU_SLACK_S
    assert case["cpu_time_s"] <= cap, case
    assert report["throttled"]["cpu_hog"] > 0  # cpu.max held it back (not a starved guest)


def test_the_executor_is_healthy_after_and_leaves_no_cgroup(report: dict[str, Any]) -> None:
    last = _case(report, "last_ok")
    assert last["status"] == "succeeded", last
    assert last["stdout"]["data"] == "still here\n"
    assert report["left_after"] == {name: [] for name in report["cases"]}  # each removed
    assert report["left_under_root"] == []
