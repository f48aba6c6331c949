"""The contract pipeline's phases as pure functions over JSON envelopes.

Each phase takes the previous phase's envelope, or a raw document (earlier phases then run
in-process first, so any phase can be run alone), and returns the next envelope:

    document -> validated -> normalised -> fingerprinted -> evaluated -> summarised

A document that fails validation becomes a ``rejected`` envelope (``ok: false`` plus
field-level ``errors``); every later phase passes it through unchanged, so a chain ends with
the errors as its result rather than an exception. An envelope that is itself malformed (a
hand-made or truncated one) is rejected the same way. Every phase is a pure function of its
input (and ``as_of``): re-running one after a redelivery yields the same envelope.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal

from taskfleet.contracts.canonical import fingerprint_of, normalise
from taskfleet.contracts.evaluate import evaluate
from taskfleet.contracts.model import Contract, FieldError, validate_document
from taskfleet.contracts.summary import summarise

STAGE_KEY: Final = "contract_stage"
Phase = Literal["validate", "normalise", "fingerprint", "evaluate", "summarise"]
PHASES: tuple[Phase, ...] = ("validate", "normalise", "fingerprint", "evaluate", "summarise")
#: The stage each phase produces, in pipeline order.
STAGES: tuple[str, ...] = ("validated", "normalised", "fingerprinted", "evaluated", "summarised")
REJECTED: Final = "rejected"


def today_utc() -> dt.date:
    """The evaluation date used when none is given."""
    return dt.datetime.now(dt.UTC).date()


def parse_as_of(as_of: str | dt.date | None) -> dt.date:
    """An ``as_of`` argument (ISO date string, date, or None for today UTC) as a date."""
    if as_of is None:
        return today_utc()
    if isinstance(as_of, dt.date):
        return as_of
    return dt.date.fromisoformat(as_of)


def rejected(phase: str, errors: list[FieldError]) -> dict[str, Any]:
    """The envelope of a document (or envelope) that cannot go further."""
    return {STAGE_KEY: REJECTED, "ok": False, "phase": phase, "errors": list(errors)}


def is_envelope(payload: Any) -> bool:
    """Whether ``payload`` is a pipeline envelope rather than a raw document."""
    return isinstance(payload, dict) and STAGE_KEY in payload


def _validate(document: Any, as_of: dt.date) -> dict[str, Any]:
    outcome = validate_document(document)
    if not isinstance(outcome, Contract):
        return rejected("validate", outcome)
    return {STAGE_KEY: "validated", "contract": outcome.model_dump(mode="json")}


def _normalise(env: dict[str, Any], as_of: dt.date) -> dict[str, Any]:
    outcome = validate_document(env["contract"])
    if not isinstance(outcome, Contract):
        return rejected("normalise", outcome)
    return {STAGE_KEY: "normalised", "canonical": normalise(outcome)}


def _fingerprint(env: dict[str, Any], as_of: dt.date) -> dict[str, Any]:
    canonical = env["canonical"]
    return {
        STAGE_KEY: "fingerprinted",
        "canonical": canonical,
        "fingerprint": fingerprint_of(canonical),
    }


def _evaluate(env: dict[str, Any], as_of: dt.date) -> dict[str, Any]:
    return {**env, STAGE_KEY: "evaluated", "evaluation": evaluate(env["canonical"], as_of)}


def _summarise(env: dict[str, Any], as_of: dt.date) -> dict[str, Any]:
    summary = summarise(env["canonical"], env["fingerprint"], env["evaluation"])
    return {STAGE_KEY: "summarised", **summary}


_STEPS: dict[Phase, Callable[[Any, dt.date], dict[str, Any]]] = {
    "validate": _validate,
    "normalise": _normalise,
    "fingerprint": _fingerprint,
    "evaluate": _evaluate,
    "summarise": _summarise,
}


def run_phase(phase: Phase, payload: Any, as_of: str | dt.date | None = None) -> dict[str, Any]:
    """Bring ``payload`` (a document or an envelope) up to the stage ``phase`` produces.

    An envelope already at or past that stage, or rejected, is returned unchanged.
    """
    target = PHASES.index(phase)
    model: Contract | None = None  # kept when validated here: normalise need not re-parse
    env: dict[str, Any]
    if not is_envelope(payload):
        outcome = validate_document(payload)
        if not isinstance(outcome, Contract):
            return rejected("validate", outcome)
        model = outcome
        env = {STAGE_KEY: "validated", "contract": None}
        if target == 0:
            env["contract"] = model.model_dump(mode="json")
        position = 0
    else:
        env = payload
        stage: Any = env[STAGE_KEY]
        if stage == REJECTED:
            return env
        if stage not in STAGES:
            return rejected(phase, [_malformed(f"unknown {STAGE_KEY} {stage!r}")])
        position = STAGES.index(stage)
    if env[STAGE_KEY] == REJECTED or position >= target:
        return env
    day = parse_as_of(as_of) if target >= PHASES.index("evaluate") else dt.date.min
    for step in PHASES[position + 1 : target + 1]:
        try:
            if step == "normalise" and model is not None:
                env = {STAGE_KEY: "normalised", "canonical": normalise(model)}
            else:
                env = _STEPS[step](env, day)
        except (KeyError, TypeError, ValueError, InvalidOperation, AttributeError) as exc:
            return rejected(step, [_malformed(f"malformed {STAGES[position]} envelope: {exc!r}")])
        if env[STAGE_KEY] == REJECTED:
            return env
    return env


def _malformed(msg: str) -> FieldError:
    return FieldError(loc=STAGE_KEY, type="malformed_envelope", msg=msg)


def process(document: Any, as_of: str | dt.date | None = None) -> dict[str, Any]:
    """Every phase in one call: the summary, or the rejection."""
    return run_phase("summarise", document, as_of)


def gather(results: list[Any]) -> dict[str, Any]:
    """Combine a batch's results, in submission order, with counts and totals per currency."""
    sums: dict[str, Decimal] = {}
    for r in results:
        if isinstance(r, dict) and r.get("ok"):
            sums[r["currency"]] = sums.get(r["currency"], Decimal(0)) + Decimal(r["contract_value"])
    totals = {cur: str(amount) for cur, amount in sorted(sums.items())}
    accepted = sum(1 for r in results if isinstance(r, dict) and r.get("ok"))
    return {
        "count": len(results),
        "accepted": accepted,
        "rejected": len(results) - accepted,
        "value_by_currency": totals,
        "results": results,
    }


def reuse_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """Cache key of a ``contract.process`` call: fingerprint and evaluation date.

    For the result-reuse middleware (``job(..., cache=reuse_key)``); None (run the job) when
    the document is not a valid contract, since a rejection is cheap to recompute.
    """
    document = args[0] if args else kwargs.get("payload")
    outcome = validate_document(document)
    if not isinstance(outcome, Contract):
        return None
    as_of = args[1] if len(args) > 1 else kwargs.get("as_of")
    return f"{fingerprint_of(normalise(outcome))}:{parse_as_of(as_of).isoformat()}"
