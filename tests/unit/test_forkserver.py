"""The fork server's guards: which programs may fork their workers, and which children."""

from __future__ import annotations

import sys
import sysconfig
import types
from pathlib import Path

import pytest

from taskfleet.fleet import forkserver
from taskfleet.fleet.children import Child


def _main(monkeypatch: pytest.MonkeyPatch, spec: object, path: str | None) -> None:
    module = types.ModuleType("__main__")
    module.__spec__ = spec  # type: ignore[assignment]
    if path is not None:
        module.__file__ = path
    monkeypatch.setitem(sys.modules, "__main__", module)


def test_a_module_run_with_dash_m_or_an_installed_script_may_fork(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _main(monkeypatch, types.SimpleNamespace(name="taskfleet.cli.__main__"), None)
    assert forkserver.main_is_import_safe()
    script = str(Path(sysconfig.get_path("scripts")) / "taskfleet")
    _main(monkeypatch, None, script)
    assert forkserver.main_is_import_safe()


def test_a_plain_script_launches_its_workers_instead(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Each forked process imports the main module: an unguarded script would run again."""
    _main(monkeypatch, None, str(tmp_path / "embed_fleet.py"))
    assert not forkserver.main_is_import_safe()
    child = Child("cpu-worker", "worker", [sys.executable, "-m", "celery"], tmp_path / "x.log", "")
    child.pool = "solo"
    assert not forkserver.WorkerForkServer().start(child, {}, append=False)
    assert child.popen is None
    assert not (tmp_path / "x.log").exists()  # nothing was started, nothing written


def test_only_solo_workers_are_forked() -> None:
    argv = [sys.executable, "-m", "celery", "worker"]
    solo = Child("cpu-worker", "worker", argv, Path("x"), "", pool="solo")
    prefork = Child("cpu-worker", "worker", argv, Path("x"), "", pool="prefork")
    beat = Child("beat", "beat", argv, Path("x"), "")
    assert forkserver.forkable(solo)
    assert not forkserver.forkable(prefork)
    assert not forkserver.forkable(beat)


def test_a_worker_is_forked_only_from_a_command_line_the_fork_server_can_run() -> None:
    assert forkserver.forkable_argv([sys.executable, "-m", "taskfleet.workers.main", "-A", "a"])
    assert forkserver.forkable_argv([sys.executable, "-m", "celery", "-A", "a", "worker"])
    assert not forkserver.forkable_argv([sys.executable, "-m", "taskfleet.cli", "up"])
    assert not forkserver.forkable_argv(["/usr/bin/celery", "-A", "a", "worker"])
