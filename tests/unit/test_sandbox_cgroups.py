"""Whole-run cgroup limits: the decision logic and the per-run files.

FAKE CGROUP FILESYSTEM: most tests here use a temporary directory standing in for a cgroup
v2 directory (plain files named like the kernel's interface files, written and read back).
It checks what taskfleet decides and writes, not what the kernel enforces: this machine's
memory, pids and cpu controllers are held by cgroup v1, so no run can be limited by cgroup v2
here. The last tests use the real cgroup filesystem where there is one.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

from taskfleet.config.sandbox import load_sandbox_settings
from taskfleet.sandbox import cgroups
from taskfleet.sandbox.cgroups import NOT_CONFIGURED, RunCgroup, probe
from taskfleet.sandbox.limits import resolve_limits

MIB = 1024 * 1024


def _fake_cgroup(path: Path, controllers: str, subtree: str = "") -> Path:
    """FAKE: a directory with the interface files a delegated cgroup v2 directory has."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "cgroup.controllers").write_text(controllers + "\n")
    (path / "cgroup.subtree_control").write_text(subtree + "\n")
    return path


def _fake_kernel_mkdir(monkeypatch: pytest.MonkeyPatch) -> None:
    """FAKE: mkdir and rmdir of a cgroup as the kernel does them (interface files appear and
    go with the directory)."""
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args: object, **kwargs: object) -> None:
        real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]
        for name in ("memory.max", "memory.swap.max", "memory.oom.group", "pids.max",
                     "cpu.max", "cgroup.procs", "cgroup.kill", "memory.events", "pids.events"):  # fmt: skip
            (self / name).write_text("")

    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setattr(Path, "rmdir", lambda self: shutil.rmtree(self))


def test_unset_means_per_process_and_says_so() -> None:
    support = probe(None)
    assert support.root is None
    assert support.reason == NOT_CONFIGURED
    assert support.note().startswith("limits are per process only")
    assert "TASKFLEET_SANDBOX_CGROUP_ROOT" in support.note()


def test_a_directory_that_is_not_a_cgroup_is_refused(tmp_path: Path) -> None:
    assert "is not a cgroup v2 directory" in probe(str(tmp_path)).reason


def test_missing_controllers_are_named(tmp_path: Path) -> None:
    support = probe(str(_fake_cgroup(tmp_path / "cg", "cpuset hugetlb")))
    assert support.root is None
    assert "memory, pids, cpu not available" in support.reason


def test_available_controllers_are_enabled_for_the_runs(tmp_path: Path) -> None:
    root = _fake_cgroup(tmp_path / "cg", "cpuset cpu io memory pids", subtree="cpu")
    support = probe(str(root))
    assert support.root == root
    assert (root / "cgroup.subtree_control").read_text() == "+memory +pids"
    assert "whole-run limits" in support.note()


def test_a_missing_root_is_created_under_a_delegated_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = _fake_cgroup(tmp_path / "service", "memory pids cpu io")
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args: object, **kwargs: object) -> None:  # FAKE: the kernel's files
        real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]
        (self / "cgroup.controllers").write_text("memory pids cpu\n")
        (self / "cgroup.subtree_control").write_text("\n")

    monkeypatch.setattr(Path, "mkdir", mkdir)
    support = probe(str(parent / "sandbox"))
    assert support.root == parent / "sandbox", support.reason
    assert (parent / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert (parent / "sandbox" / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"


def test_a_cgroup_not_writable_by_the_worker_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _fake_cgroup(tmp_path / "cg", "memory pids cpu", subtree="memory pids cpu")
    monkeypatch.setattr(cgroups.os, "access", lambda *_: False)
    assert "is not delegated to this worker" in probe(str(root)).reason


def test_each_run_gets_its_limits_and_the_breached_one_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_kernel_mkdir(monkeypatch)
    root = _fake_cgroup(tmp_path / "cg", "memory pids cpu", subtree="memory pids cpu")
    limits = resolve_limits({"memory_bytes": 64 * MIB, "processes": 8}, load_sandbox_settings())
    run = RunCgroup.create(root, limits, cpus=0.5)
    assert run.path.parent == root
    assert run.path.name.startswith("run-")
    assert (run.path / "memory.max").read_text() == str(64 * MIB)
    assert (run.path / "memory.swap.max").read_text() == "0"
    assert (run.path / "memory.oom.group").read_text() == "1"
    assert (run.path / "pids.max").read_text() == "10"  # + the launcher and init
    assert (run.path / "cpu.max").read_text() == "50000 100000"
    run.attach(12345)
    assert (run.path / "cgroup.procs").read_text() == "12345"
    assert run.breached() is None
    (run.path / "pids.events").write_text("max 3\n")
    assert run.breached() == "processes"
    (run.path / "memory.events").write_text("low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\n")
    assert run.breached() == "memory"  # the OOM kill ended the run; forks failing did not
    run.kill()
    assert (run.path / "cgroup.kill").read_text() == "1"
    (run.path / "cgroup.procs").write_text("")  # FAKE: the kernel emptied it
    assert run.close() == "memory"
    assert not run.path.exists()


def test_up_says_limits_are_per_process_without_delegation() -> None:
    from taskfleet.cli.sandbox_status import sandbox_status

    line = sandbox_status(load_sandbox_settings(cgroup_root=None))
    assert line.startswith("sandbox: ")
    assert "seccomp filter" in line
    assert "limits are per process only" in line


def test_without_delegation_the_executor_reports_per_process_limits() -> None:
    from taskfleet.sandbox.executor import SandboxExecutor

    executor = SandboxExecutor(load_sandbox_settings(cgroup_root=None), prestart=False)
    assert executor.cgroups.root is None
    assert executor.cgroups.reason == NOT_CONFIGURED


REAL_V2 = Path("/sys/fs/cgroup/unified")


@pytest.mark.skipif(
    not (REAL_V2 / "cgroup.controllers").is_file(), reason="no hybrid cgroup v2 mount"
)
def test_real_cgroup_v2_without_the_controllers_is_refused_with_the_reason() -> None:
    # REAL cgroup filesystem: a hybrid host's v2 mount, whose controllers v1 holds.
    held = {"memory", "pids", "cpu"} - set((REAL_V2 / "cgroup.controllers").read_text().split())
    if not held:
        pytest.skip("this v2 mount has the controllers")
    support = probe(str(REAL_V2))
    assert support.root is None
    assert "not available" in support.reason or "not delegated" in support.reason


def test_removal_waits_out_a_cgroup_the_kernel_still_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed tasks leave ``cgroup.procs`` before the kernel releases them: until then rmdir
    fails with EBUSY, and the removal tries again instead of leaving the cgroup behind."""
    _fake_kernel_mkdir(monkeypatch)
    root = _fake_cgroup(tmp_path / "cg", "memory pids cpu", subtree="memory pids cpu")
    run = RunCgroup.create(root, resolve_limits({}, load_sandbox_settings()), cpus=1.0)
    attempts: list[Path] = []

    def rmdir(self: Path) -> None:
        attempts.append(self)
        if len(attempts) < 3:  # FAKE: two tries while the killed tasks are being released
            raise OSError(errno.EBUSY, "Device or resource busy")
        shutil.rmtree(self)

    monkeypatch.setattr(Path, "rmdir", rmdir)
    run.remove()
    assert len(attempts) == 3
    assert not run.path.exists()


def test_removal_gives_up_naming_the_cgroup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_kernel_mkdir(monkeypatch)
    root = _fake_cgroup(tmp_path / "cg", "memory pids cpu", subtree="memory pids cpu")
    run = RunCgroup.create(root, resolve_limits({}, load_sandbox_settings()), cpus=1.0)
    monkeypatch.setattr("taskfleet.sandbox.cgroups.EMPTY_TIMEOUT_S", 0.05)

    def busy(self: Path) -> None:
        raise OSError(errno.EBUSY, "Device or resource busy")

    monkeypatch.setattr(Path, "rmdir", busy)
    with pytest.raises(RuntimeError, match="not empty after"):
        run.remove()
