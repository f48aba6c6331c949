"""``taskfleet scale status|history``: what the autoscaler decided, and why."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import redis
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from taskfleet.config import ConfigError, load_settings, resolve_services
from taskfleet.config.autoscale import load_autoscale_settings
from taskfleet.scheduler.store import AutoscaleStore

DEFAULT_HISTORY_LIMIT = 20
EXIT_USAGE = 2
EXIT_FAILED = 1

scale_cli = typer.Typer(
    help="The autoscaler: its latest decisions and history.", no_args_is_help=True
)
console = Console(highlight=False)


def _store() -> AutoscaleStore:
    try:
        settings = load_autoscale_settings()
        urls = resolve_services(load_settings())
    except ConfigError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True)
        raise typer.Exit(EXIT_USAGE) from None
    return AutoscaleStore(redis.Redis.from_url(urls.redis_url), settings.interval)


def _when(at: Any) -> str:
    return datetime.fromtimestamp(float(at), UTC).strftime("%H:%M:%S") if at else "-"


def _rows(entry: dict[str, Any]) -> list[list[str]]:
    if entry.get("status") != "decided":
        return [
            [_when(entry.get("at")), "-", "skipped", "-", "-", "-", str(entry.get("reason", ""))]
        ]
    rows = []
    for pool, part in entry.get("pools", {}).items():
        inputs, decision = part["inputs"], part["decision"]
        action = decision["action"] + (" (dry run)" if entry.get("dry_run") else "")
        rows.append(
            [
                _when(entry["at"]),
                pool,
                action,
                f"{decision['current']} -> {decision['target']}",
                f"{inputs['depth']} / {inputs['in_flight']}",
                str(decision["desired_replicas"]),
                decision["reason"],
            ]
        )
    return rows


def _table(entries: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in (
        "time (UTC)",
        "pool",
        "action",
        "concurrency",
        "depth / in flight",
        "replicas",
        "reason",
    ):
        table.add_column(column, overflow="fold")
    for entry in entries:
        for row in _rows(entry):
            table.add_row(*map(escape, row))
    return table


def _read(fn: Any) -> Any:
    try:
        return fn()
    except redis.RedisError as exc:
        console.print(f"[bold red]error:[/] cannot reach Redis: {escape(str(exc))}")
        raise typer.Exit(EXIT_FAILED) from None


@scale_cli.command("status")
def status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """The latest decision per pool and the desired replicas (hosts) per pool."""
    store = _store()
    latest = _read(lambda: store.history(1))
    replicas = _read(store.replicas)
    if as_json:
        typer.echo(
            json.dumps(
                {"latest": latest[0] if latest else None, "desired_replicas": replicas}, indent=2
            )
        )
        return
    if not latest:
        console.print("no autoscaler decision yet (is beat running?)")
        return
    console.print(_table(latest, "autoscaler: latest decision"))
    console.print("desired replicas: " + ", ".join(f"{p}={n}" for p, n in sorted(replicas.items())))


@scale_cli.command("history")
def history(
    limit: Annotated[
        int, typer.Option(min=1, help="Decisions to show, newest first.")
    ] = DEFAULT_HISTORY_LIMIT,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """The decision log, newest first: time, inputs, decision, reason, result."""
    store = _store()
    entries = _read(lambda: store.history(limit))
    if as_json:
        for entry in entries:
            typer.echo(json.dumps(entry, default=str))
        return
    console.print(_table(entries, f"autoscaler: last {len(entries)} decisions"))
