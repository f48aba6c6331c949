"""Submit contracts to a fleet: one, a batch (a chord), or a single phase.

``process_contract`` gives the request a stable job id derived from the contract's
fingerprint and the ``as_of`` date (computed here, in-process, in well under a millisecond),
so the same contract sent twice is the same job: when the result store already holds its
SUCCESS, the second call sends nothing and its handle reads that stored result.

Two pipelines run the same phases and return the same result:

* ``fast`` (default): one ``contract.process`` job running every phase in-process;
* ``chain``: ``validate | normalise | fingerprint | evaluate | summarise``, five jobs, each
  a hop through the broker and the result store (several times slower; see the bench).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from celery import Celery, chain, chord, group
from celery.result import AsyncResult

from taskfleet.client import DEFAULT_RESULT_TIMEOUT_S, Client, JobFailed
from taskfleet.contracts.canonical import fingerprint_of, normalise
from taskfleet.contracts.model import Contract, validate_document
from taskfleet.contracts.pipeline import PHASES, Phase, parse_as_of
from taskfleet.publishing.base import CLIENT_HEADER
from taskfleet.routing.priority import DEFAULT_PRIORITY
from taskfleet.routing.wire import job_id_for

Pipeline = Literal["fast", "chain"]
PROCESS_KIND = "contract.process"
GATHER_KIND = "contract.gather"
NOTIFY_KIND = "contract.notify"


@dataclass
class ContractHandle:
    """A submitted contract (or batch): its job id, fingerprint, and result when ready."""

    id: str
    app: Celery = field(repr=False)
    fingerprint: str | None = None
    deduplicated: bool = False

    @property
    def async_result(self) -> AsyncResult:
        """Celery's view of the final job (the summary, or the chord's gather)."""
        return AsyncResult(self.id, app=self.app)

    def result(self, timeout: float | None = DEFAULT_RESULT_TIMEOUT_S) -> Any:
        """Wait for the final result (see ``JobHandle.result`` for the errors)."""
        from celery.exceptions import TimeoutError as CeleryTimeout

        res = self.async_result
        try:
            value = res.get(timeout=timeout, propagate=False, disable_sync_subtasks=False)
        except CeleryTimeout:
            raise TimeoutError(f"contract job {self.id} not finished after {timeout}s") from None
        if res.failed():
            raise JobFailed(self.id, type(value).__name__, str(value))
        return value


def request_key(document: Any) -> tuple[str, str | None]:
    """A stable key for a document: its fingerprint when valid, else a hash of its JSON.

    Returns:
        (key, fingerprint or None).
    """
    outcome = validate_document(document)
    if isinstance(outcome, Contract):
        fingerprint = fingerprint_of(normalise(outcome))
        return fingerprint, fingerprint
    raw = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return "raw:" + hashlib.sha256(raw.encode()).hexdigest(), None


def contract_signature(app: Celery, document: Any, as_of: str, pipeline: Pipeline = "fast") -> Any:
    """The canvas for one contract: a ``contract.process`` job or a five-job chain."""
    if pipeline == "fast":
        return app.signature(PROCESS_KIND, args=(document,), kwargs={"as_of": as_of})
    links = [app.signature("contract.validate", args=(document,))]
    links += [app.signature(f"contract.{phase}") for phase in PHASES[1:3]]
    links += [app.signature(f"contract.{phase}", kwargs={"as_of": as_of}) for phase in PHASES[3:]]
    return chain(*links)


def _app(client: Client | None) -> Celery:
    if client is not None:
        return client.app
    from taskfleet.app_config import producer_app

    return producer_app()


def _admit(client: Client | None, client_id: str | None, jobs: int) -> dict[str, Any]:
    """Pass ``jobs`` contract jobs through ``client``'s enqueue gate (its admission control
    and ``client_id``'s enqueue limit); the ``apply_async`` options that name the sender.

    Raises:
        Overloaded, RateLimited, BatchTooLarge: nothing may be published.
    """
    if client is None:
        return {"headers": {CLIENT_HEADER: client_id}} if client_id is not None else {}
    client_id = client.sender(client_id)
    if client.gate is not None:
        queue = client.topology.cpu_queue
        client.gate.admit([queue] * jobs, [DEFAULT_PRIORITY] * jobs, client_id)
    return {"headers": {CLIENT_HEADER: client_id}} if client_id is not None else {}


def _stored_success(app: Celery, job_id: str) -> bool:
    return bool(app.backend.get_task_meta(job_id).get("status") == "SUCCESS")


def process_contract(
    document: Any,
    client: Client | None = None,
    *,
    as_of: str | dt.date | None = None,
    pipeline: Pipeline = "fast",
    notify_url: str | None = None,
    client_id: str | None = None,
) -> ContractHandle:
    """Run the whole pipeline on ``document``; the handle's result is the summary.

    Args:
        document: A contract document (a JSON object).
        client: Whose app (broker, result store) to use; the default app when None.
        client_id: Who asks (default: ``client``'s own): its enqueue limit and ``client``'s
            admission control apply, and the job carries it (``taskfleet_client_id``) to its
            execution limit. Raises ``RateLimited`` or ``Overloaded``, publishing nothing.
        as_of: Evaluation date (ISO string or date); today (UTC) when None.
        pipeline: ``fast`` (one job) or ``chain`` (one job per phase).
        notify_url: Also POST the result to this http(s) webhook (a ``contract.notify``
            job on the I/O pool, after the result is stored).
    """
    app = _app(client)
    day = parse_as_of(as_of).isoformat()
    key, fingerprint = request_key(document)
    job_id = job_id_for(PROCESS_KIND, f"{key}:{day}")
    if _stored_success(app, job_id):
        return ContractHandle(job_id, app, fingerprint, deduplicated=True)
    options = _admit(client, client_id, 1)
    canvas = contract_signature(app, document, day, pipeline)
    if notify_url is not None:
        from taskfleet.contracts.notify import check_url

        check_url(notify_url)  # refuse a bad URL now, not later on a worker
        canvas = canvas.set(link=app.signature(NOTIFY_KIND, args=(notify_url,)))
    canvas.apply_async(task_id=job_id, **options)
    return ContractHandle(job_id, app, fingerprint)


def process_batch(
    documents: Sequence[Any],
    client: Client | None = None,
    *,
    as_of: str | dt.date | None = None,
    pipeline: Pipeline = "fast",
    client_id: str | None = None,
) -> ContractHandle:
    """Fan ``documents`` out (a chord) and gather their results in order.

    The handle's result is ``{"count", "accepted", "rejected", "value_by_currency",
    "results"}``; a batch identical to one already finished is served from the store.
    ``client_id`` as in :func:`process_contract`: the batch is admitted whole or not at all.
    """
    if not documents:
        raise ValueError("process_batch needs at least one document")
    app = _app(client)
    day = parse_as_of(as_of).isoformat()
    keys = [request_key(doc)[0] for doc in documents]
    batch_id = job_id_for(GATHER_KIND, hashlib.sha256("\n".join(keys).encode()).hexdigest() + day)
    if _stored_success(app, batch_id):
        return ContractHandle(batch_id, app, deduplicated=True)
    options = _admit(client, client_id, len(documents))
    header = group(contract_signature(app, doc, day, pipeline) for doc in documents)
    chord(header, app.signature(GATHER_KIND)).apply_async(task_id=batch_id, **options)
    return ContractHandle(batch_id, app)


def run_phase(
    phase: Phase,
    payload: Any,
    client: Client | None = None,
    *,
    as_of: str | dt.date | None = None,
) -> ContractHandle:
    """Run one phase alone on a document or on a previous phase's envelope."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; phases: {', '.join(PHASES)}")
    app = _app(client)
    kwargs = {"as_of": parse_as_of(as_of).isoformat()} if phase in PHASES[3:] else {}
    result = app.signature(f"contract.{phase}", args=(payload,), kwargs=kwargs).apply_async()
    return ContractHandle(result.id, app)
