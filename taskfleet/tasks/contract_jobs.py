"""Contract jobs: each pipeline phase as a CPU job, the whole pipeline as one, and notify.

Phases compose with Celery canvas (each takes the previous phase's result as its first
argument); ``taskfleet.contracts.api`` builds the chains and chords. Every job is a pure
function of its arguments, so a redelivered job recomputes the same result, and the result
store keeps the first SUCCESS written for an id.
"""

from __future__ import annotations

from typing import Any

from taskfleet.contracts.pipeline import gather, process, reuse_key, run_phase
from taskfleet.tasks.base import job
from taskfleet.tasks.job_app import app


@job(app, "contract.validate", "cpu")
def validate(payload: Any) -> dict[str, Any]:
    """Validate a contract document (an envelope passes through)."""
    return run_phase("validate", payload)


@job(app, "contract.normalise", "cpu")
def normalise(payload: Any) -> dict[str, Any]:
    """Canonical form of a validated contract (a raw document is validated first)."""
    return run_phase("normalise", payload)


@job(app, "contract.fingerprint", "cpu")
def fingerprint(payload: Any) -> dict[str, Any]:
    """SHA-256 of the canonical form."""
    return run_phase("fingerprint", payload)


@job(app, "contract.evaluate", "cpu")
def evaluate(payload: Any, as_of: str | None = None) -> dict[str, Any]:
    """Totals, schedule checks and condition states on ``as_of`` (ISO date; default today)."""
    return run_phase("evaluate", payload, as_of)


@job(app, "contract.summarise", "cpu")
def summarise(payload: Any, as_of: str | None = None) -> dict[str, Any]:
    """The final summary (or the rejection the chain carried along)."""
    return run_phase("summarise", payload, as_of)


@job(app, "contract.process", "cpu", cache=reuse_key)  # answered by fingerprint + as_of
def process_contract(
    payload: Any, as_of: str | None = None, client_id: str | None = None
) -> dict[str, Any]:
    """Every phase in one job: the fast path (no hop through the broker between phases).

    ``client_id`` names who asked, as the system this implements took it: a bare
    ``send_task`` caller may pass it here instead of the ``taskfleet_client_id`` header;
    either way the client's execution limit applies. It does not change the answer.
    """
    return process(payload, as_of)


@job(app, "contract.gather", "cpu")
def gather_batch(results: list[Any]) -> dict[str, Any]:
    """Chord callback: a batch's results in order, with counts and totals per currency."""
    return gather(results)


@job(app, "contract.notify", "io")
def notify(result: Any, url: str, idempotency_key: str | None = None) -> dict[str, Any]:
    """POST a finished result to the caller's webhook; raises when it is not delivered.

    The webhook module (httpx, the outbound transport) is imported here, on the first
    delivery: a worker that sends none never loads it.
    """
    from taskfleet.contracts import notify as webhook

    return webhook.deliver(result, url, idempotency_key=idempotency_key)
