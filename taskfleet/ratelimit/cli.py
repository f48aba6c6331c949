"""``taskfleet limits status [client]``: rate-limit counters, configured limits, overload.

Exit codes: 0 done; 2 invalid configuration.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from taskfleet.config import ConfigError, load_settings, resolve_services
from taskfleet.config.limits import load_limit_settings
from taskfleet.ratelimit.status import COUNTERS, limits_status

limits_cli = typer.Typer(help="Fleet-wide rate limits and admission control.", no_args_is_help=True)


def _report(client_id: str | None) -> dict[str, Any]:
    import redis

    from taskfleet.routing.topology import Topology

    try:
        settings = load_settings()
        limit_settings = load_limit_settings()
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    topology = Topology.from_settings(settings)
    client = redis.Redis.from_url(resolve_services(settings).redis_url)
    try:
        queues = [topology.cpu_queue, topology.io_queue]
        return limits_status(client, limit_settings, queues, client_id)
    finally:
        client.close()


@limits_cli.command()
def status(
    client_id: Annotated[str | None, typer.Argument(help="One client's status")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Counters (allowed, refused, started, deferred, shed) per client, kind and queue; the
    limits configured; each queue's backlog, head age and whether it is shedding."""
    report = _report(client_id)
    if as_json:
        typer.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    typer.echo(f"fallback when Redis is down: {report['fallback']}")
    for scope in report["scopes"]:
        counts = "  ".join(f"{name} {scope['counters'].get(name, 0)}" for name in COUNTERS)
        typer.echo(f"{scope['scope']}  {counts}")
        for context, policy in scope["limits"].items():
            busy = scope["busy_s"].get(context, 0.0)
            typer.echo(f"    {context}: {policy}  (bucket busy for {busy:.3f}s)")
    for queue, reading in report.get("queues", {}).items():
        shedding = "SHEDDING" if reading["shedding"] else "admitting"
        typer.echo(
            f"queue {queue}: backlog {reading['backlog']}, head age "
            f"{reading['head_age_s']:.1f}s, {shedding}"
        )
