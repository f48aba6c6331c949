"""``taskfleet shards status|promote`` and ``taskfleet results query|count``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import redis
import typer
from sqlalchemy.exc import SQLAlchemyError

from taskfleet.config import ConfigError, load_settings, resolve_services
from taskfleet.config.sharding import load_sharding_settings
from taskfleet.sharding.admin import promote as promote_shard
from taskfleet.sharding.admin import status as cluster_status
from taskfleet.sharding.cluster import ShardCluster
from taskfleet.sharding.fencing import FENCED, fence, fence_demoted
from taskfleet.sharding.query import DEFAULT_QUERY_LIMIT, ResultStore, ShardAnswer
from taskfleet.sharding.rebalance import DEFAULT_GRACE_S, rebalance

EXIT_USAGE = 2
EXIT_FAILED = 1
#: Exit status of a query answered by some shards only.
EXIT_PARTIAL = 3

shards_cli = typer.Typer(
    help="Sharded durable results: the map and the shards.", no_args_is_help=True
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
KindOpt = Annotated[str | None, typer.Option("--kind", help="Task name.")]
StateOpt = Annotated[str | None, typer.Option("--state", help="SUCCESS, FAILURE...")]
SinceOpt = Annotated[
    float | None, typer.Option("--since", help="Updated in the last this many seconds.")
]


@contextmanager
def _cluster(*, sharded_only: bool = False) -> Iterator[ShardCluster]:
    """The configured cluster; unsharded, the one database as a one-shard cluster."""
    try:
        settings = load_sharding_settings()
        cluster = ShardCluster.from_settings(settings)
        if cluster is None:
            if sharded_only:
                typer.echo("error: TASKFLEET_DATABASE_URLS is not set (unsharded)", err=True)
                raise typer.Exit(EXIT_USAGE)
            url = resolve_services(load_settings()).database_url
            cluster = ShardCluster.single(url, max_lag_s=settings.replica_max_lag)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except SQLAlchemyError as exc:
        typer.echo(f"error: cannot read the shard map: {exc}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    try:
        yield cluster
    finally:
        cluster.dispose()


def _since(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.now(UTC) - timedelta(seconds=seconds)


def _finish(answer: ShardAnswer, payload: Any, as_json: bool, text: str) -> None:
    if as_json:
        typer.echo(json.dumps({"result": payload, "partial": answer.partial,
                               "missing": answer.missing}, default=str))  # fmt: skip
    else:
        typer.echo(text)
        for shard, problem in answer.missing.items():
            typer.echo(f"partial: {shard} did not answer: {problem}", err=True)
    if answer.partial:
        raise typer.Exit(EXIT_PARTIAL)


def query(
    kind: KindOpt = None,
    state: StateOpt = None,
    since: SinceOpt = None,
    limit: Annotated[int, typer.Option(min=1)] = DEFAULT_QUERY_LIMIT,
    as_json: JsonOpt = False,
) -> None:
    """Results by kind, state and age, newest first, from every shard (exit 3: partial)."""
    with _cluster() as cluster:
        store = ResultStore(cluster, load_sharding_settings().shard_query_deadline)
        try:
            answer = store.query(kind=kind, state=state, since=_since(since), limit=limit)
        finally:
            store.close()
    lines = [
        f"{r['updated_at']:%Y-%m-%d %H:%M:%S}  {r['status']}  {r['key']}" for r in answer.value
    ]
    _finish(answer, answer.value, as_json, "\n".join(lines) or "no results")


def count(
    kind: KindOpt = None, state: StateOpt = None, since: SinceOpt = None, as_json: JsonOpt = False
) -> None:
    """How many results match, over every shard (exit 3: partial)."""
    with _cluster() as cluster:
        store = ResultStore(cluster, load_sharding_settings().shard_query_deadline)
        try:
            answer = store.count(kind=kind, state=state, since=_since(since))
        finally:
            store.close()
    _finish(answer, answer.value, as_json, str(answer.value))


@shards_cli.command("status")
def status(as_json: JsonOpt = False) -> None:
    """The map, and per shard: logical shards, rows, replica lag, write breaker state."""
    with _cluster(sharded_only=True) as cluster:
        client = redis.Redis.from_url(resolve_services(load_settings()).redis_url)
        report = cluster_status(cluster, client)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"map version {report['version']} ({report['strategy']})")
    for name, shard in report["shards"].items():
        lag = shard["replica_lag_s"]
        typer.echo(
            f"{name}: {shard['logical_shards']} logical, rows={shard['rows']}, "
            f"replica lag={'-' if lag is None else f'{lag:.2f}s'}, breaker={shard['breaker']}"
            f"{', promoted' if shard['promoted'] else ''}"
            f"{', error: ' + shard['error'] if shard['error'] else ''}"
        )


@shards_cli.command("promote")
def promote(shard: Annotated[str, typer.Argument(help="The shard, e.g. shard1")]) -> None:
    """Promote SHARD's replica (pg_promote) and make it the shard's primary in the map."""
    with _cluster(sharded_only=True) as cluster:
        try:
            new_map = promote_shard(cluster, shard)
        except (ValueError, RuntimeError, SQLAlchemyError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_FAILED) from None
    typer.echo(f"{shard}: replica promoted; map version {new_map.version}")
    old = fence(cluster, shard)
    typer.echo(
        f"{shard}: old primary {old}" + (" (fenced when seen again)" if old != FENCED else "")
    )


@shards_cli.command("fence")
def fence_command() -> None:
    """Make every promoted shard's old primary refuse writes (read-only), where it answers."""
    with _cluster(sharded_only=True) as cluster:
        outcomes = fence_demoted(cluster)
    for shard, outcome in outcomes.items():
        typer.echo(f"{shard}: old primary {outcome}")
    if not outcomes:
        typer.echo("no shard has been promoted")


GraceOpt = Annotated[
    float, typer.Option("--grace", min=0, help="Seconds between the switch and the re-copy.")
]


def _move(target: Any, grace: float, assign: dict[int, str] | None = None) -> None:
    with _cluster(sharded_only=True) as cluster:
        shards = target(cluster)
        try:
            move = rebalance(cluster, shards, grace_s=grace, assign=assign)
        except (ValueError, RuntimeError, SQLAlchemyError) as exc:
            typer.echo(f"error: {exc} (run the command again to resume)", err=True)
            raise typer.Exit(EXIT_FAILED) from None
    typer.echo(
        f"map version {move.target.version}: {len(move.moved)} logical shards moved "
        f"({move.moved_fraction:.1%}), {move.copied} rows copied, {move.deleted} deleted"
    )


@shards_cli.command("rebalance")
def rebalance_cmd(grace: GraceOpt = DEFAULT_GRACE_S) -> None:
    """Place the logical shards over every configured shard (or finish an unfinished move)."""
    _move(lambda cluster: cluster.names, grace)


@shards_cli.command("add")
def add(shard: Annotated[str, typer.Argument()], grace: GraceOpt = DEFAULT_GRACE_S) -> None:
    """Add SHARD (listed in TASKFLEET_DATABASE_URLS) to the map, moving ~1/N of the rows."""
    _move(lambda cluster: list(dict.fromkeys([*cluster.router.map.shards, shard])), grace)


@shards_cli.command("remove")
def remove(shard: Annotated[str, typer.Argument()], grace: GraceOpt = DEFAULT_GRACE_S) -> None:
    """Move SHARD's rows to the other shards and take it out of the map."""
    _move(lambda cluster: [s for s in cluster.router.map.shards if s != shard], grace)


@shards_cli.command("place")
def place(
    shard: Annotated[str, typer.Argument(help="The shard that gets them, e.g. shard2")],
    logical: Annotated[list[int], typer.Argument(help="Logical shards (0..255)")],
    grace: GraceOpt = DEFAULT_GRACE_S,
) -> None:
    """Put LOGICAL shards on SHARD (the map becomes a directory; the move as for add)."""
    shards = lambda cluster: list(dict.fromkeys([*cluster.router.map.shards, shard]))  # noqa: E731
    _move(shards, grace, dict.fromkeys(logical, shard))


def _embedded() -> Any:
    from taskfleet.devstack.shards import EmbeddedShards

    try:
        return EmbeddedShards(load_settings().data_dir)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None


@shards_cli.command("up")
def up(
    count: Annotated[int, typer.Argument(help="Primaries (1-16)")],
    replicas: Annotated[
        bool, typer.Option("--replicas", help="A streaming replica for each")
    ] = False,
) -> None:
    """Start COUNT embedded primaries (and replicas) and print their TASKFLEET_DATABASE_URLS."""
    from taskfleet.devstack.common import DevStackError

    try:
        cluster = _embedded().up(count, replicas=replicas)
    except (ValueError, DevStackError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    typer.echo(f"{count} embedded shard(s) running; export TASKFLEET_DATABASE_URLS:", err=True)
    typer.echo(cluster.database_urls)


@shards_cli.command("down")
def down() -> None:
    """Stop the embedded shard servers (their data is kept)."""
    stopped = _embedded().down()
    typer.echo(f"stopped: {', '.join(stopped) or 'none running'}")
