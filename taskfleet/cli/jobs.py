"""``taskfleet submit`` and ``taskfleet status``: enqueue a job, inspect one."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from taskfleet.app_config import create_app
from taskfleet.cli.app import cli
from taskfleet.cli.output import (
    EXIT_FAILED,
    EXIT_NOT_FINISHED,
    EXIT_USAGE,
    console,
    err_console,
    fail,
    friendly_errors,
    settings,
)
from taskfleet.client import Client, JobFailed, PayloadError
from taskfleet.routing import PriorityError, UnknownJobKind, parse_priority

DEFAULT_SUBMIT_TIMEOUT_S = 30.0
DEFAULT_PAYLOAD_JSON = "{}"


def _check_kind(kind: str) -> None:
    """Fail before touching any service when no pool serves ``kind``."""
    from taskfleet.tasks.table import JOB_POOLS

    if kind not in JOB_POOLS:
        known = ", ".join(sorted(JOB_POOLS))
        raise UnknownJobKind(f"unknown job kind {kind!r}; known kinds: {known}")


@cli.command()
def submit(
    kind: Annotated[str, typer.Argument(help="Job kind, e.g. cpu.checksum.")],
    payload_json: Annotated[
        str | None,
        typer.Argument(metavar="PAYLOAD_JSON", help="The job's payload as JSON (default: {})."),
    ] = None,
    priority: Annotated[
        str | None,
        typer.Option("--priority", "-p", help="0..9 (9 most urgent) or low/normal/high/critical."),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="Same kind and key = same job: only the first one is enqueued."),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait for the result and print it.")
    ] = False,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds --wait waits.")
    ] = DEFAULT_SUBMIT_TIMEOUT_S,
) -> None:
    """Enqueue one job and print its id; with --wait, print its result (JSON) too.

    Exits 1 if the job failed, 3 if it did not finish within --timeout.
    """
    with friendly_errors():
        text = DEFAULT_PAYLOAD_JSON if payload_json is None else payload_json
        try:
            payload = json.loads(text)
        except ValueError as exc:
            fail(f"PAYLOAD_JSON is not valid JSON: {exc}", EXIT_USAGE)
        try:
            level = parse_priority(priority)
            _check_kind(kind)
            celery_app = create_app(settings())
            client = Client(celery_app)
            try:
                handle = client.enqueue(
                    kind, payload, priority=level, idempotency_key=idempotency_key
                )
            finally:
                client.close()
        except (UnknownJobKind, PriorityError, PayloadError) as exc:
            fail(str(exc), EXIT_USAGE)
        typer.echo(handle.id)
        if handle.deduplicated:
            err_console.print(
                "[yellow]note:[/] a job with this idempotency key was already enqueued; "
                "this is its id"
            )
        try:
            if not wait:
                return
            result = handle.result(timeout=timeout)
        except JobFailed as exc:
            fail(str(exc), EXIT_FAILED)
        except TimeoutError as exc:
            fail(str(exc), EXIT_NOT_FINISHED)
        finally:
            celery_app.close()
        typer.echo(json.dumps(result, indent=2, sort_keys=True, default=str))


def job_status(celery_app: Any, job_id: str) -> dict[str, Any]:
    """A job's state, result or error, and where and when it finished.

    Args:
        celery_app: The Celery app whose result backend to read.
        job_id: The job's id.

    Returns:
        ``id``, ``state``, ``kind``, ``result`` or ``error`` (and ``traceback``),
        ``date_done``, ``worker``, ``queue``, ``retries``.
    """
    meta: dict[str, Any] = dict(celery_app.backend.get_task_meta(job_id))
    state = str(meta.get("status", "PENDING"))
    info: dict[str, Any] = {
        "id": job_id,
        "state": state,
        "kind": meta.get("name"),
        "date_done": meta.get("date_done"),
        "worker": meta.get("worker"),
        "queue": meta.get("queue"),
        "retries": meta.get("retries"),
    }
    value = meta.get("result")
    if isinstance(value, BaseException):
        info["error"] = {"type": type(value).__name__, "message": str(value)}
        info["traceback"] = meta.get("traceback")
    else:
        info["result"] = value
    return info


@cli.command()
def status(
    job_id: Annotated[str, typer.Argument(help="The id `submit` printed.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a job's state, result or error, when it finished and on which worker."""
    with friendly_errors():
        celery_app = create_app(settings())
        try:
            info = job_status(celery_app, job_id)
        finally:
            celery_app.close()
        if as_json:
            typer.echo(json.dumps(info, indent=2, default=str))
            return
        table = Table(show_header=False, box=None)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        state = info["state"]
        if state == "PENDING":
            state += " (unknown job, or not finished yet)"
        table.add_row("id", escape(job_id))
        table.add_row("state", escape(state))
        if info.get("kind"):
            table.add_row("kind", escape(str(info["kind"])))
        if "error" in info:
            error = info["error"]
            table.add_row("error", f"[red]{escape(error['type'])}: {escape(error['message'])}[/]")
        elif info["state"] != "PENDING":
            table.add_row("result", escape(json.dumps(info["result"], default=str)))
        for key in ("date_done", "worker", "queue"):
            if info.get(key):
                table.add_row(key, escape(str(info[key])))
        console.print(table)
