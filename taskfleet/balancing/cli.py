"""``taskfleet backends status``: each backend's fleet-wide health, ejections and counters.

Health and counters are read from Redis (what every process of the fleet wrote); with
``--probe`` each backend's health path is also probed now, from this machine.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import httpx
import redis
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from taskfleet.balancing.health import HealthBoard
from taskfleet.config import ConfigError, load_settings, resolve_services
from taskfleet.config.balancing import BACKENDS_ENV, BalancingSettings, load_balancing_settings
from taskfleet.outbound import OutboundRefused, outbound_client

EXIT_USAGE = 2
EXIT_FAILED = 1
COLUMNS = ("set", "backend", "URL", "weight", "region", "health", "streak")
#: Counter -> column heading.
COUNTER_COLUMNS = {
    "requests": "calls",
    "failures": "failed",
    "http_5xx": "5xx",
    "connect_errors": "refused",
    "retries": "retries",
    "ejections": "ejected",
}

backends_cli = typer.Typer(
    help="Outbound backend sets: health, ejections, counters.", no_args_is_help=True
)
console = Console(highlight=False)


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _settings() -> tuple[BalancingSettings, redis.Redis]:
    try:
        settings = load_balancing_settings()
        if not settings.backends:  # say so before starting an embedded Redis for nothing
            raise _fail(f"no backend set is declared ({BACKENDS_ENV} is unset)", EXIT_USAGE)
        url = resolve_services(load_settings()).redis_url
    except ConfigError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    return settings, redis.Redis.from_url(url)


def _probe(url: str, settings: BalancingSettings) -> str:
    try:
        with outbound_client() as http:
            response = http.get(url + settings.health_path, timeout=settings.health_timeout)
    except (httpx.HTTPError, OutboundRefused) as exc:
        return type(exc).__name__
    return f"HTTP {response.status_code}"


def collect(
    settings: BalancingSettings, client: redis.Redis, only: str | None, probe: bool
) -> list[dict[str, Any]]:
    """Every backend of the chosen sets with its fleet-wide marks and counters, as data.

    Raises:
        KeyError: ``only`` names no declared set.
        redis.RedisError: Redis is unreachable.
    """
    sets = [only] if only else sorted(settings.backends)
    rows = []
    for set_name in sets:
        specs = settings.backend_set(set_name)
        board = HealthBoard(set_name, [s.name for s in specs], client, settings)
        marks = board.read()
        for spec in specs:
            entry = marks[spec.name]
            rows.append(
                {
                    "set": set_name,
                    **spec.model_dump(),
                    "health": _health(entry),
                    **entry,
                    **({"probe": _probe(spec.url, settings)} if probe else {}),
                }
            )
    return rows


def _health(entry: dict[str, Any]) -> str:
    for kind in ("down", "ejected"):
        mark = entry.get(kind)
        if mark:
            return f"{kind} ({mark['reason']}; {mark['seconds_left']:.0f}s left)"
    return "up"


@backends_cli.command("status")
def status(
    set_name: Annotated[str | None, typer.Argument(help="One backend set (default: all).")] = None,
    probe: Annotated[bool, typer.Option("--probe", help="Probe each health path now.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Each backend's health (fleet-wide), ejection streak and counters summed over the fleet."""
    settings, client = _settings()
    try:
        rows = collect(settings, client, set_name, probe)
    except KeyError as exc:
        raise _fail(str(exc.args[0]), EXIT_USAGE) from None
    except redis.RedisError as exc:
        raise _fail(f"cannot reach Redis: {exc}", EXIT_FAILED) from None
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="taskfleet backends", title_justify="left")
    for column in (*COLUMNS, *COUNTER_COLUMNS.values(), *(("probe",) if probe else ())):
        table.add_column(column, overflow="fold")
    for row in rows:
        counters = row["counters"]
        cells = [
            row["set"],
            row["name"],
            row["url"],
            str(row["weight"]),
            row["region"] or "-",
            row["health"],
            str(row["ejection_streak"]),
            *(str(counters.get(c, 0)) for c in COUNTER_COLUMNS),
            *((row["probe"],) if probe else ()),
        ]
        table.add_row(*map(escape, cells))
    console.print(table)
