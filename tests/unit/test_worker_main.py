"""``taskfleet.workers.main``: Celery's ``worker`` command without the umbrella ``celery`` command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from taskfleet.workers.main import MODULE, command_line, split_worker_argv

#: Modules only Celery's umbrella command brings (its plugins and its other subcommands).
UMBRELLA_ONLY = ("flower", "prompt_toolkit", "click_repl", "celery.bin.celery", "celery.bin.amqp")
#: Runs ``taskfleet.workers.main`` with the given arguments and prints which of
#: ``UMBRELLA_ONLY`` it imported, however it exits.
PROBE = f"""
import atexit, json, runpy, sys
watched = {UMBRELLA_ONLY!r}
atexit.register(lambda: print(json.dumps(sorted(
    m for m in sys.modules if m in watched or m.split(".")[0] in watched))))
sys.argv = ["{MODULE}", *sys.argv[1:]]
runpy.run_module("{MODULE}", run_name="__main__")
"""


def _probe(*args: str) -> tuple[int, str, list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60
    )
    *output, last = done.stdout.strip().splitlines()
    return done.returncode, "\n".join(output), json.loads(last)


def test_a_worker_command_line_is_split_into_the_app_and_the_worker_arguments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CELERY_APP", raising=False)
    assert split_worker_argv(["-A", "pkg.app", "worker", "-P", "solo"]) == (
        "pkg.app",
        ["-P", "solo"],
    )
    assert split_worker_argv(["--app=pkg.app", "worker"]) == ("pkg.app", [])
    assert split_worker_argv(["-A", "pkg.app", "beat"]) is None
    assert split_worker_argv(["-A", "pkg.app", "-b", "redis://", "worker"]) is None
    assert split_worker_argv(["worker"]) is None  # no app: Celery's own command says so
    monkeypatch.setenv("CELERY_APP", "env.app")
    assert split_worker_argv(["worker", "-c", "1"]) == ("env.app", ["-c", "1"])


def test_command_lines_run_with_this_interpreter() -> None:
    argv = ["celery", "-A", "taskfleet.app", "worker", "-P", "solo"]
    assert command_line(argv) == [sys.executable, "-m", MODULE, *argv[1:]]
    assert command_line(argv, lean=False) == [sys.executable, "-m", "celery", *argv[1:]]


def test_it_runs_celerys_own_worker_command() -> None:
    """The command this module runs is the one ``celery worker`` runs (Celery 5's layout)."""
    from celery.bin.celery import celery
    from celery.bin.worker import worker

    assert celery.commands["worker"] is worker


def test_the_worker_command_parses_without_the_umbrella_commands_imports() -> None:
    code, output, imported = _probe("-A", "taskfleet.app", "worker", "--help")
    assert code == 0
    assert "--concurrency" in output
    assert "--pool" in output
    assert imported == []


def test_a_bad_worker_option_fails_as_celery_worker_fails() -> None:
    code, _, imported = _probe("-A", "taskfleet.app", "worker", "--no-such-option")
    assert code == 2  # click's usage error
    assert imported == []


def test_any_other_command_line_goes_to_celerys_command() -> None:
    code, output, imported = _probe("-A", "taskfleet.app", "report")
    assert code == 0
    assert "software ->" in output  # ``celery report``
    assert "celery.bin.celery" in imported
