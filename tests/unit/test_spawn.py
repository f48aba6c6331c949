"""A worker's helper processes start with no Python run in the child before exec.

Each case runs in a fresh interpreter patched by gevent, as an I/O worker is. An at-fork
hook yields to the hub in the child (as OpenTelemetry's, which starts a thread there, does),
while another greenlet is ready to run: under gevent's own ``Popen`` that greenlet runs in
the child too, which is how a worker's remote-control connection got out of step.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("gevent")

RUN_TIMEOUT_S = 60.0

SCRIPT = textwrap.dedent(
    """
    from gevent import monkey

    monkey.patch_all()

    import os
    import subprocess
    import sys

    import gevent

    from taskfleet.workers.spawn import start_process

    marker, how = sys.argv[1], sys.argv[2]

    def note_pid():
        with open(marker, "a") as out:
            out.write(f"{os.getpid()}\\n")

    # A hook that yields in the child, as a thread started there does under gevent.
    os.register_at_fork(after_in_child=lambda: gevent.sleep(0.05))
    ready = gevent.spawn(note_pid)  # runnable, not run yet
    argv = [sys.executable, "-c", "raise SystemExit(3)"]
    if how == "gevent":
        proc = subprocess.Popen(argv, env=dict(os.environ))
    else:
        proc = start_process(argv, env=dict(os.environ), stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.read() == b""
    status = proc.wait(timeout=30)
    ready.join()
    print(os.getpid(), status, proc.poll())
    """
)


def run(tmp_path: Path, how: str) -> tuple[list[str], list[str]]:
    """The pids that ran the ready greenlet, and the script's ``pid status poll`` line."""
    marker = tmp_path / f"ran-{how}"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(marker), how],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=True,
    )
    return marker.read_text().split(), done.stdout.split()


def test_the_child_runs_none_of_the_parents_greenlets(tmp_path: Path) -> None:
    ran, (pid, status, polled) = run(tmp_path, "start_process")
    assert ran == [pid]  # the parent only
    assert (status, polled) == ("3", "3")  # the real exit status, through gevent's waitpid


def test_gevents_popen_does_run_them_in_the_child(tmp_path: Path) -> None:
    """The hazard itself, so the case above keeps proving something."""
    ran, (pid, _status, _polled) = run(tmp_path, "gevent")
    assert pid in ran
    assert len(ran) == 2  # and once more, in the child


def test_no_gevent_means_the_plain_popen() -> None:
    from taskfleet.workers.spawn import gevent_patched

    if "gevent.monkey" in sys.modules:
        pytest.skip("gevent's monkey module was imported in this process")
    assert not gevent_patched()


def test_a_preexec_fn_is_refused() -> None:
    from taskfleet.workers.spawn import start_process

    with pytest.raises(ValueError, match="preexec_fn"):
        start_process([sys.executable, "-c", "pass"], env={}, preexec_fn=lambda: None)
