"""``taskfleet up`` and ``taskfleet demo``: run a local fleet in the foreground."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from taskfleet.cli.app import cli
from taskfleet.cli.demo import DEFAULT_DEMO_JOBS, DEFAULT_DEMO_TIMEOUT_S, run_demo
from taskfleet.cli.demo_output import DemoProgress, priority_table, summary, verdict
from taskfleet.cli.fleet_status import print_event, status_table
from taskfleet.cli.output import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NOT_RUNNING,
    EXIT_OK,
    console,
    err_console,
    fleet_table,
    friendly_errors,
    print_ready,
    report_death,
    settings,
)
from taskfleet.cli.sandbox_status import sandbox_status
from taskfleet.config.resilience import get_resilience_settings
from taskfleet.devstack.logfiles import tail
from taskfleet.fleet import (
    DEFAULT_FLOWER_PORT,
    DEFAULT_READY_TIMEOUT_S,
    DEFAULT_STOP_TIMEOUT_S,
    GIVE_UP_CRASHES,
    GIVE_UP_WINDOW_S,
    ChildDied,
    Fleet,
    FleetError,
    FleetOptions,
    GaveUp,
    read_status,
    signals_raise_interrupt,
)
from taskfleet.fleet.restarts import RestartPolicy, default_wait

MAX_CONCURRENCY = 10_000


def _fleet(
    cpu_concurrency: int | None,
    io_concurrency: int | None,
    flower: bool,
    flower_port: int,
    beat: bool,
    keep_services: bool,
    metrics: bool = False,
) -> Fleet:
    """The supervised fleet ``up`` and ``demo`` run."""
    options = FleetOptions(
        cpu_concurrency=cpu_concurrency,
        io_concurrency=io_concurrency,
        flower=flower,
        flower_port=flower_port,
        beat=beat,
        metrics=metrics,
        keep_services=keep_services,
    )
    return Fleet(settings(), options)


def _report_failure(exc: FleetError) -> int:
    """Say why the fleet failed (a dead child with its log tail); the exit code to use."""
    if isinstance(exc, ChildDied):
        report_death(exc)
    elif isinstance(exc, GaveUp):
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        last = tail(exc.log_path)
        if last:
            err_console.print(f"[dim]--- last lines of {escape(str(exc.log_path))} ---[/]")
            err_console.print(last, markup=False)
    else:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
    return EXIT_FAILED


def _start_and_wait(fleet: Fleet, ready_timeout: float) -> None:
    """Start every child, show what runs, and wait until the workers answer pings."""
    with console.status("starting services and workers..."):
        fleet.start()
    console.print(fleet_table(fleet))
    with console.status("waiting for the workers to answer pings..."):
        took = fleet.wait_ready(ready_timeout)
    print_ready(fleet, took)
    console.print(sandbox_status(), markup=False)


def _stop_fleet(fleet: Fleet, timeout: float) -> None:
    """Stop the fleet and say what happened."""
    with console.status("stopping the fleet..."):
        fleet.stop(timeout)
    killed = [c.name for c in fleet.children if c.killed]
    if killed:
        err_console.print(
            f"[yellow]warning:[/] killed (no exit within {timeout:.0f}s, or asked twice): "
            f"{', '.join(killed)}"
        )
    left = fleet.leftovers()
    if left:
        err_console.print(f"[yellow]warning:[/] processes still running: {left}")
    if not fleet.children and not fleet.stack_stopped:
        return  # nothing had started
    parts = [f"stopped {len(fleet.children)} processes"]
    if fleet.stack_stopped:
        parts.append("embedded services stopped")
    elif fleet.started_stack:
        parts.append(f"embedded services left running (data in {fleet.data_dir})")
    console.print("; ".join(parts))


CpuOption = Annotated[
    int | None,
    typer.Option(min=1, max=512, help="CPU worker processes [default: TASKFLEET_CPU_CONCURRENCY]"),
]
IoOption = Annotated[
    int | None,
    typer.Option(
        min=1, max=MAX_CONCURRENCY, help="I/O greenlets [default: TASKFLEET_IO_CONCURRENCY]"
    ),
]
ReadyOption = Annotated[
    float, typer.Option(min=1.0, help="Seconds to wait for the workers to answer pings.")
]
StopOption = Annotated[
    float, typer.Option(min=0.0, help="Seconds processes get to exit before SIGKILL.")
]
KeepOption = Annotated[
    bool,
    typer.Option("--keep-services", help="Leave the embedded Redis/PostgreSQL running on exit."),
]


@cli.command()
def up(
    cpu_concurrency: CpuOption = None,
    io_concurrency: IoOption = None,
    flower_port: Annotated[
        int, typer.Option(min=1, max=65535, help="Flower's port on 127.0.0.1.")
    ] = DEFAULT_FLOWER_PORT,
    flower: Annotated[bool, typer.Option("--flower/--no-flower", help="Run Flower.")] = True,
    beat: Annotated[bool, typer.Option("--beat/--no-beat", help="Run celery beat.")] = True,
    metrics: Annotated[
        bool, typer.Option("--metrics/--no-metrics", help="Serve /metrics, /healthz, /readyz.")
    ] = True,
    keep_services: KeepOption = False,
    ready_timeout: ReadyOption = DEFAULT_READY_TIMEOUT_S,
    stop_timeout: StopOption = DEFAULT_STOP_TIMEOUT_S,
) -> None:
    """Run a CPU worker, an I/O worker, beat, Flower and the metrics endpoint until Ctrl-C.

    Unset service URLs are served by the embedded Redis + PostgreSQL, started if needed
    and stopped again on exit unless --keep-services. Logs go to <data dir>/logs/.
    """
    code = EXIT_OK
    with friendly_errors():
        fleet = _fleet(
            cpu_concurrency, io_concurrency, flower, flower_port, beat, keep_services, metrics
        )
        with signals_raise_interrupt():
            try:
                _start_and_wait(fleet, ready_timeout)
                console.print(
                    "Press Ctrl-C to stop. A child that dies is restarted "
                    f"(gives up after {GIVE_UP_CRASHES} crashes within {GIVE_UP_WINDOW_S:.0f}s); "
                    "'taskfleet ps' shows restarts."
                )
                backoff = get_resilience_settings().restart_backoff
                fleet.supervise(
                    on_event=print_event, policy=RestartPolicy(wait=default_wait(backoff))
                )
            except KeyboardInterrupt:
                console.print("stopping (Ctrl-C again to kill at once)...")
            except FleetError as exc:  # GaveUp included
                code = _report_failure(exc)
            finally:
                _stop_fleet(fleet, stop_timeout)
    raise typer.Exit(code)


@cli.command()
def ps(
    json_output: Annotated[bool, typer.Option("--json", help="Print the raw status.")] = False,
) -> None:
    """What 'taskfleet up' in this data folder runs: pids, restarts, last exits, latest events.

    Reads <data dir>/fleet-status.json, which the supervisor rewrites on every death,
    restart and recovery. Exits 3 when no 'taskfleet up' runs here.
    """
    with friendly_errors():
        data_dir = Path(settings().data_dir).resolve()
    doc = read_status(data_dir)
    if doc is None:
        err_console.print(f"no 'taskfleet up' status in {data_dir}")
        raise typer.Exit(EXIT_NOT_RUNNING)
    if json_output:
        console.print_json(json.dumps(doc))
    else:
        running = doc.get("supervisor_running")
        console.print(
            f"supervisor pid {doc.get('supervisor_pid')} "
            f"{'running' if running else 'NOT running (last status shown)'}, "
            f"updated {doc.get('updated_at')}"
        )
        console.print(status_table(doc))
        for event in doc.get("events") or []:
            console.print(
                f"{event.get('at')}  {escape(str(event.get('name')))} {event.get('kind')}: "
                f"{escape(str(event.get('detail')))}"
            )
    raise typer.Exit(EXIT_OK if doc.get("supervisor_running") else EXIT_NOT_RUNNING)


@cli.command()
def demo(
    jobs: Annotated[int, typer.Option(min=1, help="Jobs to send.")] = DEFAULT_DEMO_JOBS,
    timeout: Annotated[
        float, typer.Option(min=1.0, help="Seconds, from the first publish, to wait for results.")
    ] = DEFAULT_DEMO_TIMEOUT_S,
    seed: Annotated[int | None, typer.Option(help="Seed for a repeatable workload.")] = None,
    flower: Annotated[
        bool, typer.Option("--flower/--no-flower", help="Also run Flower (off by default).")
    ] = False,
    flower_port: Annotated[int, typer.Option(min=1, max=65535)] = DEFAULT_FLOWER_PORT,
    cpu_concurrency: CpuOption = None,
    io_concurrency: IoOption = None,
    keep_services: KeepOption = False,
    ready_timeout: ReadyOption = DEFAULT_READY_TIMEOUT_S,
    stop_timeout: StopOption = DEFAULT_STOP_TIMEOUT_S,
) -> None:
    """Start a fleet (workers and beat), push a mixed workload through it, report, stop.

    About 55% cpu.checksum, 40% io.wait, 1.5% invalid jobs that fail by design, the rest
    no-ops, over priorities low/normal/high/critical. Exits 0 only if no job was lost, only
    the invalid jobs failed, and every result reached PostgreSQL.
    """
    code = EXIT_OK
    with friendly_errors():
        fleet = _fleet(cpu_concurrency, io_concurrency, flower, flower_port, True, keep_services)
        with signals_raise_interrupt():
            try:
                _start_and_wait(fleet, ready_timeout)
                columns = (
                    TextColumn("{task.description:>12}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    TextColumn("{task.fields[detail]}"),
                )
                with Progress(*columns, console=console) as progress:
                    report = run_demo(
                        fleet, jobs, timeout, seed=seed, on_progress=DemoProgress(progress, jobs)
                    )
                console.print(summary(report))
                console.print(priority_table(report))
                line = verdict(report)
                console.print(
                    f"[bold green]{escape(line)}[/]"
                    if report.ok
                    else f"[bold red]{escape(line)}[/]",
                    soft_wrap=True,
                )
                code = EXIT_OK if report.ok else EXIT_FAILED
            except KeyboardInterrupt:
                console.print("interrupted; stopping...")
                code = EXIT_INTERRUPTED
            except FleetError as exc:  # ChildDied included
                code = _report_failure(exc)
            finally:
                _stop_fleet(fleet, stop_timeout)
    raise typer.Exit(code)
