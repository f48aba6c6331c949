"""``taskfleet results status|quarantine``: the persistence backlog and quarantined results."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any

import redis
import typer

from taskfleet.config import ConfigError, load_settings, resolve_services
from taskfleet.config.cache import load_cache_settings
from taskfleet.results.backlog import STATS_KEY, stream_health
from taskfleet.results.quarantine import Quarantine
from taskfleet.results.stream import PERSIST_GROUP, PERSIST_STREAM

EXIT_USAGE = 2
EXIT_FAILED = 1
DEFAULT_LIST_LIMIT = 50

results_cli = typer.Typer(
    help="Durable results: the persistence backlog and the quarantine.", no_args_is_help=True
)
quarantine_cli = typer.Typer(
    help="Results the persister could not store in Postgres.", no_args_is_help=True
)
results_cli.add_typer(quarantine_cli, name="quarantine")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _redis() -> redis.Redis:
    try:
        return redis.Redis.from_url(resolve_services(load_settings()).redis_url)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None


def _guarded(fn: Any) -> Any:
    try:
        return fn()
    except redis.RedisError as exc:
        typer.echo(f"error: cannot reach Redis: {exc}", err=True)
        raise typer.Exit(EXIT_FAILED) from None


@results_cli.command("status")
def status(as_json: JsonOpt = False) -> None:
    """The persistence stream (length, oldest entry, pending) and quarantine counts."""
    client = _redis()
    maxlen = load_cache_settings().persist_stream_maxlen
    health = _guarded(lambda: stream_health(client, PERSIST_STREAM, PERSIST_GROUP, maxlen))
    quarantine = Quarantine(client)
    counts = _guarded(quarantine.counts)
    held = _guarded(quarantine.size)
    raw_stats: dict[Any, Any] = _guarded(lambda: client.hgetall(STATS_KEY))
    stats = {k.decode(): int(v) for k, v in raw_stats.items()}
    if as_json:
        report = {"stream": asdict(health), "quarantined": held, "counts": counts}
        typer.echo(json.dumps(report | {"stats": stats}, indent=2))
        return
    typer.echo(health.describe())
    typer.echo(f"quarantine: {held} held; counted so far: {counts or '{}'}; stats: {stats}")


@quarantine_cli.command("list")
def list_(
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = DEFAULT_LIST_LIMIT,
    as_json: JsonOpt = False,
) -> None:
    """Quarantined entries, oldest first: time, key, job, category, size, reason."""
    records = _guarded(lambda: Quarantine(_redis()).records(limit))
    for record in records:
        if as_json:
            typer.echo(json.dumps(asdict(record) | {"name": record.name}))
            continue
        when = datetime.fromtimestamp(record.at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        typer.echo(
            f"{when}  {record.name}  job={record.task_id or '-'}  {record.category}  "
            f"{record.size}B  {record.reason}"
        )
    if not records and not as_json:
        typer.echo("quarantine is empty")


@quarantine_cli.command("requeue")
def requeue(
    names: Annotated[list[str] | None, typer.Argument(help="Entries (as listed)")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every quarantined entry")] = False,
) -> None:
    """Put entries back in the persistence stream (after raising a limit, or Postgres is back)."""
    if not names and not all_:
        typer.echo("name entries, or --all", err=True)
        raise typer.Exit(EXIT_USAGE)
    quarantine = Quarantine(_redis())
    done, missing = _guarded(lambda: quarantine.requeue(PERSIST_STREAM, None if all_ else names))
    typer.echo(f"{done} requeued")
    if missing:
        typer.echo(f"not requeued (not quarantined, or gone from Redis): {missing}", err=True)
        raise typer.Exit(EXIT_FAILED)
