"""The ``taskfleet`` command line.

* ``taskfleet up`` -- run a local fleet (CPU worker, I/O worker, beat, Flower) until Ctrl-C,
  restarting what dies.
* ``taskfleet ps`` -- what ``up`` runs: pids, restarts, last exits.
* ``taskfleet demo`` -- run a fleet, push a mixed workload through it, print what happened.
* ``taskfleet submit KIND [PAYLOAD_JSON]`` -- enqueue one job, optionally wait for it.
* ``taskfleet status JOB_ID`` -- a job's state, result or error.
* ``taskfleet services up|down|status`` -- the embedded Redis + PostgreSQL.

Exit codes: 0 success; 1 a job failed, a fleet process died or a check failed; 2 invalid
input or configuration; 3 not finished in time (``submit --wait``) or services not running
(``services status``, ``ps``); 130 interrupted.

Modules: :mod:`~taskfleet.cli.app` (the Typer apps), :mod:`~taskfleet.cli.fleet_commands`
(up, ps, demo), :mod:`~taskfleet.cli.jobs` (submit, status), :mod:`~taskfleet.cli.services`,
:mod:`~taskfleet.cli.output` and :mod:`~taskfleet.cli.demo_output` (what gets printed), and
the demo run itself: :mod:`~taskfleet.cli.demo` (the run), ``demo_workload`` (the job mix)
and ``demo_report`` (what is measured).
"""

from __future__ import annotations

from rich.markup import escape

# Importing the command modules registers their commands on ``cli``, in this order.
from taskfleet.cli import fleet_commands as _fleet_commands  # noqa: F401
from taskfleet.cli import jobs as _jobs  # noqa: F401
from taskfleet.cli import services as _services  # noqa: F401
from taskfleet.cli.app import cli, services_cli
from taskfleet.cli.fleet_commands import MAX_CONCURRENCY, demo, up
from taskfleet.cli.jobs import (
    DEFAULT_PAYLOAD_JSON,
    DEFAULT_SUBMIT_TIMEOUT_S,
    job_status,
    status,
    submit,
)
from taskfleet.cli.output import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NOT_FINISHED,
    EXIT_NOT_RUNNING,
    EXIT_OK,
    EXIT_USAGE,
    console,
    err_console,
)
from taskfleet.cli.services import services_down, services_status, services_up
from taskfleet.config import ConfigError
from taskfleet.devstack import DevStackError

__all__ = [
    "DEFAULT_PAYLOAD_JSON",
    "DEFAULT_SUBMIT_TIMEOUT_S",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FINISHED",
    "EXIT_NOT_RUNNING",
    "EXIT_OK",
    "EXIT_USAGE",
    "MAX_CONCURRENCY",
    "cli",
    "console",
    "demo",
    "err_console",
    "job_status",
    "main",
    "services_cli",
    "services_down",
    "services_status",
    "services_up",
    "status",
    "submit",
    "up",
]


def main() -> None:
    """Run the ``taskfleet`` command line."""
    try:
        cli()
    except ConfigError as exc:  # raised outside a command's own handling
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise SystemExit(EXIT_USAGE) from None
    except DevStackError as exc:
        err_console.print(f"[bold red]error:[/] embedded services: {escape(str(exc))}")
        raise SystemExit(EXIT_FAILED) from None
