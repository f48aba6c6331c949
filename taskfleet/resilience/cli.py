"""``taskfleet dlq list|show|replay|purge``: dead letters from the command line.

Exit codes: 0 done; 1 nothing matched (``show``); 2 invalid input or configuration.

On RabbitMQ the listing includes messages the broker dead-lettered on its own (origin
``broker``, reason from ``x-death``: expired, rejected, maxlen, delivery_limit); reading them
leaves them in the queue. ``replay`` and ``purge`` act on both origins (``--origin`` narrows).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer

from taskfleet.config import ConfigError, load_settings
from taskfleet.resilience.dlq import DeadLetterQueues, select

dlq_cli = typer.Typer(help="Inspect, replay and purge dead-lettered jobs.", no_args_is_help=True)

QueueOpt = Annotated[str | None, typer.Option("--queue", help="Work queue the job came from")]
KindOpt = Annotated[str | None, typer.Option("--kind", help="Job kind")]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="e.g. retries_exhausted")]
AgeOpt = Annotated[float | None, typer.Option("--older-than", help="Seconds since it died")]
OriginOpt = Annotated[
    str | None,
    typer.Option(
        "--origin",
        help="taskfleet (a worker dead-lettered it) or broker (RabbitMQ did: TTL, length "
        "limit, another client's reject)",
    ),
]


def _queues() -> DeadLetterQueues:
    try:
        return DeadLetterQueues(load_settings())
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


@dlq_cli.command("list")
def list_(
    queue: QueueOpt = None,
    kind: KindOpt = None,
    reason: ReasonOpt = None,
    older_than: AgeOpt = None,
    origin: OriginOpt = None,
) -> None:
    """One line per dead letter: id, kind, queue, origin, reason, error, age."""
    for letter in _queues().list(
        select(queue=queue, kind=kind, reason=reason, older_than=older_than, origin=origin)
    ):
        typer.echo(
            f"{letter.id}  {letter.kind or '-'}  {letter.queue}  {letter.origin}  "
            f"{letter.reason}  {letter.exc_type}: {letter.exc_message[:80]}  {letter.age:.0f}s"
        )


@dlq_cli.command()
def show(job_id: str) -> None:
    """The full record of one dead letter, as JSON."""
    letter = _queues().show(job_id)
    if letter is None:
        typer.echo(f"no dead letter {job_id}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(asdict(letter), indent=2, default=str))


@dlq_cli.command()
def replay(
    job_ids: Annotated[list[str] | None, typer.Argument(help="Ids (default: the filter)")] = None,
    queue: QueueOpt = None,
    kind: KindOpt = None,
    reason: ReasonOpt = None,
    older_than: AgeOpt = None,
    origin: OriginOpt = None,
    all_: Annotated[bool, typer.Option("--all", help="Replay every dead letter")] = False,
) -> None:
    """Publish dead jobs again (each at most once, linked to the original id).

    A message the broker dead-lettered that is not a job goes back, unchanged, to the
    exchange and routing key it died from.
    """
    if not (job_ids or queue or kind or reason or origin or older_than is not None or all_):
        typer.echo("name job ids, a filter, or --all", err=True)
        raise typer.Exit(2)
    report = _queues().replay(
        select(
            queue=queue,
            kind=kind,
            reason=reason,
            older_than=older_than,
            ids=job_ids,
            origin=origin,
        )
    )
    for old, new in report.replayed.items():
        typer.echo(f"replayed {old} as {new}")
    typer.echo(
        f"{len(report.replayed)} replayed, {len(report.already_succeeded)} already succeeded, "
        f"{len(report.already_replayed)} already replayed, in {report.seconds:.3f}s"
    )


@dlq_cli.command()
def purge(
    queue: QueueOpt = None,
    kind: KindOpt = None,
    reason: ReasonOpt = None,
    older_than: AgeOpt = None,
    origin: OriginOpt = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask")] = False,
) -> None:
    """Delete dead letters matching the filter (all when no filter is given), of both
    origins: taskfleet's records and, on RabbitMQ, the broker's messages."""
    if not yes:
        typer.confirm("Delete the matching dead letters?", abort=True)
    count = _queues().purge(
        select(queue=queue, kind=kind, reason=reason, older_than=older_than, origin=origin)
    )
    typer.echo(f"{count} purged")
