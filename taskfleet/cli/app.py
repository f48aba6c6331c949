"""The ``taskfleet`` Typer application and its sub-apps, before any command is added."""

from __future__ import annotations

import typer

from taskfleet.balancing.cli import backends_cli
from taskfleet.observability.cli import capacity, health, metrics_cli
from taskfleet.ratelimit.cli import limits_cli
from taskfleet.resilience.cli import dlq_cli
from taskfleet.results.cli import results_cli
from taskfleet.scheduler.cli import scale_cli
from taskfleet.sharding.cli import count as results_count
from taskfleet.sharding.cli import query as results_query
from taskfleet.sharding.cli import shards_cli

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
cli.add_typer(results_cli, name="results")
cli.add_typer(shards_cli, name="shards")
results_cli.command("query")(results_query)
results_cli.command("count")(results_count)
cli.add_typer(backends_cli, name="backends")
cli.add_typer(limits_cli, name="limits")
cli.add_typer(metrics_cli, name="metrics")
cli.command("health")(health)
cli.command("capacity")(capacity)
