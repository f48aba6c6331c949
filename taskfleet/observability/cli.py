"""``taskfleet metrics serve`` (the endpoint, alone), ``taskfleet health`` (readiness once)
and ``taskfleet capacity`` (capacity planning per pool).

``taskfleet health`` exits with the fleet's state: 0 ready; 1 degraded (the services answer
but a pool has no consumer, a job waits too long or results lag); 3 a service (broker, Redis,
Postgres) does not answer; 2 bad configuration. ``--worker cpu@host`` checks one worker
instead (it answers a ping: 0, else 1; 3 the broker does not answer), the healthcheck of a
worker's container.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Final

import redis
import typer

from taskfleet.app_config import create_app
from taskfleet.config import ConfigError, load_settings, resolve_services
from taskfleet.config.observability import load_observability_settings
from taskfleet.observability.capacity import PoolCapacity, capacity_report
from taskfleet.observability.capacity_kinds import KindLoad, read_kind_loads
from taskfleet.observability.readiness import Check, run_checks
from taskfleet.observability.server import Endpoint, build_endpoint, make_server

EXIT_READY: Final = 0
EXIT_DEGRADED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3
#: Checks whose failure means a service is down (exit 3), not a degraded fleet (exit 1).
SERVICE_CHECKS: Final = frozenset({"broker", "redis", "postgres"})
#: How long ``taskfleet health --worker`` waits for the worker's answer.
WORKER_PING_TIMEOUT_S: Final = 5.0

metrics_cli = typer.Typer(
    help="The host's /metrics, /healthz and /readyz endpoint.", no_args_is_help=True
)


def _endpoint() -> Endpoint:
    try:
        settings = load_settings()
        return build_endpoint(settings, create_app(settings), load_observability_settings())
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None


def exit_code(checks: list[Check]) -> int:
    """The exit code of a set of checks (see the module docstring)."""
    failed = {c.name for c in checks if not c.ok}
    if failed & SERVICE_CHECKS:
        return EXIT_UNREACHABLE
    return EXIT_DEGRADED if failed else EXIT_READY


@metrics_cli.command("serve")
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address (default TASKFLEET_METRICS_HOST).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default TASKFLEET_METRICS_PORT).")] = None,
) -> None:
    """Serve /metrics, /healthz and /readyz until interrupted (credentials from the environment)."""
    endpoint = _endpoint()
    obs = endpoint.probes.limits
    server = make_server(
        endpoint, host or obs.metrics_host, obs.metrics_port if port is None else port
    )
    bound_host, bound_port = server.server_address[:2]
    typer.echo(f"metrics: serving http://{bound_host!s}:{bound_port}/metrics", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def worker_check(name: str, timeout_s: float = WORKER_PING_TIMEOUT_S) -> list[Check]:
    """Whether worker ``name`` (``cpu@host``) answers a ping: a container's liveness."""
    try:
        app = create_app(load_settings())
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1)
            replies = app.control.ping([name], timeout=timeout_s, connection=connection)
    except Exception as exc:  # kombu's connection errors differ by transport
        return [Check("broker", False, f"{type(exc).__name__}: {exc}")]
    answered = any(name in reply for reply in replies)
    detail = "answered a ping" if answered else f"no answer to a ping within {timeout_s:g}s"
    return [Check("broker", True, "reachable"), Check(f"worker {name}", answered, detail)]


def health(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    worker: Annotated[
        str | None,
        typer.Option(
            "--worker",
            help="Only whether this worker (cpu@host) answers a ping: a container's healthcheck.",
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, help="Seconds --worker waits for the answer.")
    ] = WORKER_PING_TIMEOUT_S,
) -> None:
    """Check readiness once: exit 0 ready, 1 degraded, 3 a service unreachable."""
    checks = worker_check(worker, timeout) if worker else run_checks(_endpoint().probes)
    if as_json:
        typer.echo(json.dumps([c.__dict__ for c in checks], indent=2))
    else:
        for check in checks:
            typer.echo(f"{'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    raise typer.Exit(exit_code(checks))


def _seconds(value: float) -> str:
    return "never" if value == float("inf") else f"{value:.3g}s"


def _line(row: PoolCapacity) -> str:
    load = row.load
    if load.service_time_s <= 0:
        return f"{load.pool}: arrivals {load.arrival_rate:.3g}/s, no completions measured yet"
    return (
        f"{load.pool}: arrivals {load.arrival_rate:.3g}/s, service {load.service_time_s:.3g}s, "
        f"{load.processes} processes on {load.workers} workers, utilisation "
        f"{row.utilisation:.0%}, expected wait {_seconds(row.expected_wait_s)}, "
        f"backlog {load.backlog} drains in {_seconds(row.drain_time_s)}; for a wait of "
        f"{row.target_wait_s:g}s: {row.processes_needed} processes, {row.workers_needed} workers"
    )


def capacity(
    target_wait: Annotated[
        float | None,
        typer.Option(help="Target mean wait, s (default TASKFLEET_CAPACITY_TARGET_WAIT_S)."),
    ] = None,
    metrics_dir: Annotated[
        str | None,
        typer.Option(
            help="Worker metric files for the split by kind (default PROMETHEUS_MULTIPROC_DIR)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Utilisation, expected wait (M/M/c), drain time and the size for a target wait, per pool,
    and each kind's share of its pool when worker metric files are at hand.

    Reads the autoscaler's measurements in Redis (the autoscaler must be ticking).
    """
    try:
        settings, obs = load_settings(), load_observability_settings()
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    wait = obs.capacity_target_wait_s if target_wait is None else target_wait
    client = redis.Redis.from_url(resolve_services(settings).redis_url)
    try:
        report = capacity_report(client, wait, obs.capacity_window_s)
    finally:
        client.close()
    kinds = read_kind_loads(metrics_dir, {row.load.pool: row.load for row in report})
    if as_json:
        rows = [
            row.as_dict() | {"kinds": [asdict(k) for k in kinds if k.pool == row.load.pool]}
            for row in report
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    if not report:
        typer.echo("no measurements: the autoscaler has not ticked (TASKFLEET_AUTOSCALE_*)")
    for row in report:
        typer.echo(_line(row))
        for kind in (k for k in kinds if k.pool == row.load.pool):
            typer.echo(_kind_line(kind))


def _kind_line(kind: KindLoad) -> str:
    return (
        f"  {kind.kind}: {kind.share:.0%} of arrivals ({kind.arrival_rate:.3g}/s), service "
        f"{kind.service_time_s:.3g}s, {kind.offered_load:.3g} processes busy"
    )
