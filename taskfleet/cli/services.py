"""``taskfleet services up|down|status``: the embedded Redis + PostgreSQL."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from taskfleet.cli.app import services_cli
from taskfleet.cli.output import (
    EXIT_NOT_RUNNING,
    console,
    err_console,
    friendly_errors,
    settings,
)
from taskfleet.config import Settings
from taskfleet.devstack import EmbeddedStack
from taskfleet.fleet import needs_embedded_stack


def _stack(config: Settings) -> EmbeddedStack:
    if not needs_embedded_stack(config):
        err_console.print(
            "[yellow]note:[/] service URLs are configured (TASKFLEET_*_URL); taskfleet does "
            "not use the embedded stack with these settings"
        )
    return EmbeddedStack(config.data_dir)


@services_cli.command("up")
def services_up() -> None:
    """Start the embedded Redis and PostgreSQL (no-op if running); print their URLs."""
    with friendly_errors():
        stack = _stack(settings())
        with console.status("starting the embedded services..."):
            urls = stack.ensure_running()
        console.print(f"redis     {urls.redis_url}")
        console.print(f"postgres  {urls.database_url}")
        console.print(f"[dim]data in {stack.data_dir}; stop with `taskfleet services down`[/]")


@services_cli.command("down")
def services_down() -> None:
    """Stop the embedded Redis and PostgreSQL (the data is kept)."""
    with friendly_errors():
        stack = _stack(settings())
        with console.status("stopping the embedded services..."):
            stack.stop()
        console.print(f"embedded services stopped (data kept in {stack.data_dir})")


@services_cli.command("status")
def services_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show whether the embedded Redis and PostgreSQL run; exit 3 if either does not."""
    with friendly_errors():
        stack = _stack(settings())
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
