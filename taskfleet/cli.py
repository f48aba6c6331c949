"""The ``taskfleet`` command line.

* ``taskfleet up`` -- run a local fleet (CPU worker, I/O worker, beat, Flower) until Ctrl-C.
* ``taskfleet demo`` -- run a fleet, push a mixed workload through it, print what happened.
* ``taskfleet submit KIND [PAYLOAD_JSON]`` -- enqueue one job, optionally wait for it.
* ``taskfleet status JOB_ID`` -- a job's state, result or error.
* ``taskfleet services up|down|status`` -- the embedded Redis + PostgreSQL.

Exit codes: 0 success; 1 a job failed, a fleet process died or a check failed; 2 invalid
input or configuration; 3 not finished in time (``submit --wait``) or services not running
(``services status``); 130 interrupted.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Annotated, Any, NoReturn

import redis
import typer
from kombu.exceptions import OperationalError as BrokerError
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from sqlalchemy.exc import OperationalError as DatabaseError

from taskfleet.app import create_app
from taskfleet.client import Client, JobFailed, PayloadError
from taskfleet.config import ConfigError, Settings, load_settings
from taskfleet.demo import (
    DEFAULT_DEMO_JOBS,
    DEFAULT_DEMO_TIMEOUT_S,
    DemoReport,
    percentile,
    run_demo,
)
from taskfleet.devstack import DevStackError, EmbeddedStack
from taskfleet.fleet import (
    DEFAULT_FLOWER_PORT,
    DEFAULT_READY_TIMEOUT_S,
    DEFAULT_STOP_TIMEOUT_S,
    ChildDied,
    Fleet,
    FleetError,
    FleetOptions,
    needs_embedded_stack,
    sanitize_url,
    signals_raise_interrupt,
    tail,
)
from taskfleet.resilience.cli import dlq_cli
from taskfleet.routing import PriorityError, UnknownJobKind, parse_priority
from taskfleet.scheduler.cli import scale_cli

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FINISHED = 3
EXIT_NOT_RUNNING = 3
EXIT_INTERRUPTED = 130

DEFAULT_SUBMIT_TIMEOUT_S = 30.0
DEFAULT_PAYLOAD_JSON = "{}"
MAX_CONCURRENCY = 10_000

cli = typer.Typer(
    name="taskfleet",
    help="Background jobs at scale on Celery: run a local fleet, submit jobs, inspect them.",
    no_args_is_help=True,
    add_completion=False,
    # Locals of a crashing frame can hold service URLs with passwords: never print them.
    pretty_exceptions_show_locals=False,
)
services_cli = typer.Typer(
    help="Start, stop or inspect the embedded Redis + PostgreSQL.", no_args_is_help=True
)
cli.add_typer(services_cli, name="services")
cli.add_typer(dlq_cli, name="dlq")
cli.add_typer(scale_cli, name="scale")

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------- helpers


def _fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print a red one-line error (no traceback) and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


@contextlib.contextmanager
def _friendly_errors() -> Iterator[None]:
    """Turn the errors an operator can fix into a message and an exit code."""
    try:
        yield
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)
    except DevStackError as exc:
        _fail(f"embedded services: {exc}", EXIT_FAILED)
    except (redis.ConnectionError, BrokerError, DatabaseError) as exc:
        _fail(f"cannot reach a service: {exc}", EXIT_FAILED)


def _settings() -> Settings:
    """Validated settings from the environment (ConfigError is handled by the caller)."""
    return load_settings()


def _fleet_table(fleet: Fleet) -> Table:
    """What runs: the services, then every child process."""
    table = Table(title="taskfleet", title_justify="left")
    for column in ("name", "pid", "URL", "details", "log"):
        table.add_column(column, overflow="fold")
    urls = fleet.resolve()
    embedded = needs_embedded_stack(fleet.settings)
    pids: dict[str, Any] = {}
    if embedded:
        status = EmbeddedStack(fleet.data_dir).status()
        pids = {name: status[name] for name in ("redis", "postgres")}
    origin = "embedded" if embedded else "external"
    for name, url in (("redis", urls.redis_url), ("postgres", urls.database_url)):
        entry = pids.get(name)
        pid = entry.get("pid") if isinstance(entry, dict) else None
        log = entry.get("log") if isinstance(entry, dict) else ""
        table.add_row(name, str(pid or "-"), *map(escape, (sanitize_url(url), origin, log or "")))
    if urls.broker_url != urls.redis_url:
        table.add_row("broker", "-", escape(sanitize_url(urls.broker_url)), "external", "")
    for child in fleet.children:
        cells = (child.url, child.detail, str(child.log_path))
        table.add_row(child.name, str(child.pid), *map(escape, cells))
    return table


def _report_death(exc: ChildDied) -> None:
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
    last = tail(exc.child.log_path)
    if last:
        err_console.print(f"[dim]--- last lines of {escape(str(exc.child.log_path))} ---[/]")
        err_console.print(last, markup=False)


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


def _print_ready(fleet: Fleet, took: float) -> None:
    console.print(f"[bold green]ready[/] in {took:.1f}s: both workers answer pings")
    flower = next((c for c in fleet.children if c.role == "flower"), None)
    if flower is not None and fleet.auth is not None:
        if fleet.auth.generated:
            console.print(
                f"Flower: {flower.url}  user [bold]{escape(fleet.auth.user)}[/]  password "
                f"[bold]{escape(fleet.auth.password)}[/]  (generated for this run, shown once; "
                "set TASKFLEET_FLOWER_BASIC_AUTH=user:password to choose one)"
            )
        else:
            console.print(
                f"Flower: {flower.url}  user [bold]{escape(fleet.auth.user)}[/] "
                "(password from TASKFLEET_FLOWER_BASIC_AUTH)"
            )


def _start_and_wait(fleet: Fleet, ready_timeout: float) -> None:
    """Start every child, show what runs, and wait until the workers answer pings."""
    with console.status("starting services and workers..."):
        fleet.start()
    console.print(_fleet_table(fleet))
    with console.status("waiting for the workers to answer pings..."):
        took = fleet.wait_ready(ready_timeout)
    _print_ready(fleet, took)


def _fmt_ms(value: float) -> str:
    return "-" if value != value else f"{value:,.1f} ms"  # nan check


# --------------------------------------------------------------------------- up

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
    keep_services: KeepOption = False,
    ready_timeout: ReadyOption = DEFAULT_READY_TIMEOUT_S,
    stop_timeout: StopOption = DEFAULT_STOP_TIMEOUT_S,
) -> None:
    """Run a CPU worker, an I/O worker, beat and Flower until Ctrl-C or SIGTERM.

    Unset service URLs are served by the embedded Redis + PostgreSQL, started if needed
    and stopped again on exit unless --keep-services. Logs go to <data dir>/logs/.
    """
    code = EXIT_OK
    with _friendly_errors():
        options = FleetOptions(
            cpu_concurrency=cpu_concurrency,
            io_concurrency=io_concurrency,
            flower=flower,
            flower_port=flower_port,
            beat=beat,
            keep_services=keep_services,
        )
        fleet = Fleet(_settings(), options)
        with signals_raise_interrupt():
            try:
                _start_and_wait(fleet, ready_timeout)
                console.print("Press Ctrl-C to stop.")
                fleet.supervise()
            except KeyboardInterrupt:
                console.print("stopping (Ctrl-C again to kill at once)...")
            except ChildDied as exc:
                _report_death(exc)
                code = EXIT_FAILED
            except FleetError as exc:
                err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
                code = EXIT_FAILED
            finally:
                _stop_fleet(fleet, stop_timeout)
    raise typer.Exit(code)


# --------------------------------------------------------------------------- demo


class _DemoProgress:
    """Live bars: published, finished, and copied to Postgres."""

    def __init__(self, progress: Progress, jobs: int) -> None:
        self.progress = progress
        self.published = progress.add_task("published", total=jobs, detail="")
        self.finished = progress.add_task("finished", total=jobs, detail="")
        self.persisted: TaskID | None = None

    def __call__(self, report: DemoReport, phase: str) -> None:
        self.progress.update(self.published, completed=report.sent)
        detail = f"{report.failed} failed ({report.expected_failures} by design)"
        if report.dead_lettered:
            detail += f", {report.dead_lettered} dead-lettered"
        self.progress.update(self.finished, completed=report.done + report.failed, detail=detail)
        if phase == "persisting":
            if self.persisted is None:
                self.persisted = self.progress.add_task(
                    "in Postgres", total=report.pg_expected, detail=""
                )
            self.progress.update(self.persisted, completed=report.pg_rows)


def _summary(report: DemoReport) -> Table:
    table = Table(title="demo summary", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    lost_style = "green" if report.lost == 0 else "bold red"
    pg_style = "green" if report.pg_rows >= report.pg_expected else "bold red"
    failed_style = "green" if report.failed == report.expected_failures else "bold red"
    table.add_row("jobs sent", f"{report.sent:,}")
    table.add_row("done (SUCCESS)", f"{report.done:,}")
    table.add_row(
        "failed (FAILURE)",
        f"[{failed_style}]{report.failed:,}[/] (expected by design: {report.expected_failures})",
    )
    table.add_row("dead-lettered", f"{report.dead_lettered:,}")
    table.add_row("lost", f"[{lost_style}]{report.lost:,}[/]")
    if report.unfinished:
        table.add_row("no result by the deadline", f"[bold red]{report.unfinished:,}[/]")
    table.add_row("throughput", f"{report.throughput:,.0f} jobs/s")
    table.add_row("wall (first publish -> last result)", f"{report.wall_s:.2f} s")
    table.add_row("publishing", f"{report.publish_s:.2f} s")
    table.add_row("latency p50 (publish -> result)", _fmt_ms(report.p50_ms))
    table.add_row("latency p99 (publish -> result)", _fmt_ms(report.p99_ms))
    table.add_row(
        "rows in Postgres taskfleet_results",
        f"[{pg_style}]{report.pg_rows:,}[/] / {report.pg_expected:,}",
    )
    return table


def _priority_table(report: DemoReport) -> Table:
    table = Table(title="latency by priority", title_justify="left")
    for column in ("priority", "jobs", "p50", "p99"):
        table.add_column(column, justify="left" if column == "priority" else "right")
    for name in ("critical", "high", "normal", "low"):
        values = report.latency_by_priority.get(name, [])
        table.add_row(
            name, str(len(values)), _fmt_ms(percentile(values, 50)), _fmt_ms(percentile(values, 99))
        )
    return table


def _verdict(report: DemoReport) -> str:
    """One greppable line: ``demo: OK ...`` or ``demo: FAILED (reasons) ...``."""
    reasons = []
    if report.lost:
        reasons.append(f"{report.lost} lost")
    if report.failed != report.expected_failures or report.unexpected_failures:
        reasons.append(
            f"{report.failed} failed, {report.expected_failures} expected "
            f"({report.unexpected_failures} valid jobs failed)"
        )
    if report.pg_rows < report.pg_expected:
        reasons.append(f"{report.pg_expected - report.pg_rows} results missing in Postgres")
    head = "demo: OK" if report.ok else f"demo: FAILED ({'; '.join(reasons)})"
    return (
        f"{head} sent={report.sent} done={report.done} failed={report.failed} "
        f"expected_failures={report.expected_failures} dead_lettered={report.dead_lettered} "
        f"lost={report.lost} pg_rows={report.pg_rows}/{report.pg_expected} "
        f"throughput={report.throughput:.0f}/s wall_s={report.wall_s:.2f} "
        f"p50_ms={report.p50_ms:.1f} p99_ms={report.p99_ms:.1f}"
    )


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
    with _friendly_errors():
        options = FleetOptions(
            cpu_concurrency=cpu_concurrency,
            io_concurrency=io_concurrency,
            flower=flower,
            flower_port=flower_port,
            beat=True,
            keep_services=keep_services,
        )
        fleet = Fleet(_settings(), options)
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
                        fleet, jobs, timeout, seed=seed, on_progress=_DemoProgress(progress, jobs)
                    )
                console.print(_summary(report))
                console.print(_priority_table(report))
                verdict = _verdict(report)
                console.print(
                    f"[bold green]{escape(verdict)}[/]"
                    if report.ok
                    else f"[bold red]{escape(verdict)}[/]",
                    soft_wrap=True,
                )
                code = EXIT_OK if report.ok else EXIT_FAILED
            except KeyboardInterrupt:
                console.print("interrupted; stopping...")
                code = EXIT_INTERRUPTED
            except ChildDied as exc:
                _report_death(exc)
                code = EXIT_FAILED
            except FleetError as exc:
                err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
                code = EXIT_FAILED
            finally:
                _stop_fleet(fleet, stop_timeout)
    raise typer.Exit(code)


# --------------------------------------------------------------------------- submit/status


def _check_kind(kind: str) -> None:
    """Fail before touching any service when no pool serves ``kind``."""
    from taskfleet.tasks.base import JOB_POOLS

    if kind not in JOB_POOLS:
        known = ", ".join(sorted(JOB_POOLS))
        raise UnknownJobKind(f"unknown job kind {kind!r}; known kinds: {known}")


@cli.command()
def submit(
    kind: Annotated[str, typer.Argument(help="Job kind, e.g. cpu.checksum.")],
    payload_json: Annotated[
        str | None,
        typer.Argument(metavar="PAYLOAD_JSON", help="The job's payload as JSON (default: {})."),
    ] = None,
    priority: Annotated[
        str | None,
        typer.Option("--priority", "-p", help="0..9 (9 most urgent) or low/normal/high/critical."),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="Same kind and key = same job: only the first one is enqueued."),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait for the result and print it.")
    ] = False,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds --wait waits.")
    ] = DEFAULT_SUBMIT_TIMEOUT_S,
) -> None:
    """Enqueue one job and print its id; with --wait, print its result (JSON) too.

    Exits 1 if the job failed, 3 if it did not finish within --timeout.
    """
    with _friendly_errors():
        text = DEFAULT_PAYLOAD_JSON if payload_json is None else payload_json
        try:
            payload = json.loads(text)
        except ValueError as exc:
            _fail(f"PAYLOAD_JSON is not valid JSON: {exc}", EXIT_USAGE)
        try:
            level = parse_priority(priority)
            _check_kind(kind)
            celery_app = create_app(_settings())
            client = Client(celery_app)
            try:
                handle = client.enqueue(
                    kind, payload, priority=level, idempotency_key=idempotency_key
                )
            finally:
                client.close()
        except (UnknownJobKind, PriorityError, PayloadError) as exc:
            _fail(str(exc), EXIT_USAGE)
        typer.echo(handle.id)
        if handle.deduplicated:
            err_console.print(
                "[yellow]note:[/] a job with this idempotency key was already enqueued; "
                "this is its id"
            )
        try:
            if not wait:
                return
            result = handle.result(timeout=timeout)
        except JobFailed as exc:
            _fail(str(exc), EXIT_FAILED)
        except TimeoutError as exc:
            _fail(str(exc), EXIT_NOT_FINISHED)
        finally:
            celery_app.close()
        typer.echo(json.dumps(result, indent=2, sort_keys=True, default=str))


def job_status(celery_app: Any, job_id: str) -> dict[str, Any]:
    """A job's state, result or error, and where and when it finished.

    Args:
        celery_app: The Celery app whose result backend to read.
        job_id: The job's id.

    Returns:
        ``id``, ``state``, ``kind``, ``result`` or ``error`` (and ``traceback``),
        ``date_done``, ``worker``, ``queue``, ``retries``.
    """
    meta: dict[str, Any] = dict(celery_app.backend.get_task_meta(job_id))
    state = str(meta.get("status", "PENDING"))
    info: dict[str, Any] = {
        "id": job_id,
        "state": state,
        "kind": meta.get("name"),
        "date_done": meta.get("date_done"),
        "worker": meta.get("worker"),
        "queue": meta.get("queue"),
        "retries": meta.get("retries"),
    }
    value = meta.get("result")
    if isinstance(value, BaseException):
        info["error"] = {"type": type(value).__name__, "message": str(value)}
        info["traceback"] = meta.get("traceback")
    else:
        info["result"] = value
    return info


@cli.command()
def status(
    job_id: Annotated[str, typer.Argument(help="The id `submit` printed.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a job's state, result or error, when it finished and on which worker."""
    with _friendly_errors():
        celery_app = create_app(_settings())
        try:
            info = job_status(celery_app, job_id)
        finally:
            celery_app.close()
        if as_json:
            typer.echo(json.dumps(info, indent=2, default=str))
            return
        table = Table(show_header=False, box=None)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        state = info["state"]
        if state == "PENDING":
            state += " (unknown job, or not finished yet)"
        table.add_row("id", escape(job_id))
        table.add_row("state", escape(state))
        if info.get("kind"):
            table.add_row("kind", escape(str(info["kind"])))
        if "error" in info:
            error = info["error"]
            table.add_row("error", f"[red]{escape(error['type'])}: {escape(error['message'])}[/]")
        elif info["state"] != "PENDING":
            table.add_row("result", escape(json.dumps(info["result"], default=str)))
        for key in ("date_done", "worker", "queue"):
            if info.get(key):
                table.add_row(key, escape(str(info[key])))
        console.print(table)


# --------------------------------------------------------------------------- services


def _stack(settings: Settings) -> EmbeddedStack:
    if not needs_embedded_stack(settings):
        err_console.print(
            "[yellow]note:[/] service URLs are configured (TASKFLEET_*_URL); taskfleet does "
            "not use the embedded stack with these settings"
        )
    return EmbeddedStack(settings.data_dir)


@services_cli.command("up")
def services_up() -> None:
    """Start the embedded Redis and PostgreSQL (no-op if running); print their URLs."""
    with _friendly_errors():
        stack = _stack(_settings())
        with console.status("starting the embedded services..."):
            urls = stack.ensure_running()
        console.print(f"redis     {urls.redis_url}")
        console.print(f"postgres  {urls.database_url}")
        console.print(f"[dim]data in {stack.data_dir}; stop with `taskfleet services down`[/]")


@services_cli.command("down")
def services_down() -> None:
    """Stop the embedded Redis and PostgreSQL (the data is kept)."""
    with _friendly_errors():
        stack = _stack(_settings())
        with console.status("stopping the embedded services..."):
            stack.stop()
        console.print(f"embedded services stopped (data kept in {stack.data_dir})")


@services_cli.command("status")
def services_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show whether the embedded Redis and PostgreSQL run; exit 3 if either does not."""
    with _friendly_errors():
        stack = _stack(_settings())
        info = stack.status()
        servers = {name: info[name] for name in ("redis", "postgres")}
        running = all(isinstance(s, dict) and s.get("running") for s in servers.values())
        if as_json:
            typer.echo(json.dumps(info, indent=2))
        else:
            table = Table(title=f"embedded services in {stack.data_dir}", title_justify="left")
            for column in ("service", "state", "pid", "URL", "log"):
                table.add_column(column, overflow="fold")
            for name, server in servers.items():
                entry = server if isinstance(server, dict) else {}
                state = "[green]running[/]" if entry.get("running") else "[red]stopped[/]"
                table.add_row(
                    name,
                    state,
                    str(entry.get("pid") or "-"),
                    str(entry.get("url") or "-"),
                    str(entry.get("log") or ""),
                )
            console.print(table)
    if not running:
        raise typer.Exit(EXIT_NOT_RUNNING)


# --------------------------------------------------------------------------- entry point


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


if __name__ == "__main__":
    main()
