"""Terminal output shared by the commands: consoles, exit codes, errors, fleet status."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, NoReturn

import redis
import typer
from kombu.exceptions import OperationalError as BrokerError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.exc import OperationalError as DatabaseError

from taskfleet.config import ConfigError, Settings, load_settings
from taskfleet.devstack import DevStackError, EmbeddedStack
from taskfleet.fleet import ChildDied, Fleet, needs_embedded_stack, sanitize_url, tail

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FINISHED = 3
EXIT_NOT_RUNNING = 3
EXIT_INTERRUPTED = 130

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print a red one-line error (no traceback) and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    """Turn the errors an operator can fix into a message and an exit code."""
    try:
        yield
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    except DevStackError as exc:
        fail(f"embedded services: {exc}", EXIT_FAILED)
    except (redis.ConnectionError, BrokerError, DatabaseError) as exc:
        fail(f"cannot reach a service: {exc}", EXIT_FAILED)


def settings() -> Settings:
    """Validated settings from the environment (ConfigError is handled by the caller)."""
    return load_settings()


def fleet_table(fleet: Fleet) -> Table:
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


def report_death(exc: ChildDied) -> None:
    """Say which child died and show the end of its log."""
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
    last = tail(exc.child.log_path)
    if last:
        err_console.print(f"[dim]--- last lines of {escape(str(exc.child.log_path))} ---[/]")
        err_console.print(last, markup=False)


def print_ready(fleet: Fleet, took: float) -> None:
    """Say the fleet is ready, with Flower's URL and credentials (a generated password once)."""
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


def fmt_ms(value: float) -> str:
    """Milliseconds for display (``-`` for NaN)."""
    return "-" if value != value else f"{value:,.1f} ms"  # nan check
