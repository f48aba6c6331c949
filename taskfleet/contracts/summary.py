"""The short, final answer of the contract pipeline."""

from __future__ import annotations

from typing import Any

#: Verdicts: nothing to look at, or at least one issue.
VERDICT_CLEAN = "clean"
VERDICT_ATTENTION = "attention"


def summarise(
    canonical: dict[str, Any], fingerprint: str, evaluation: dict[str, Any]
) -> dict[str, Any]:
    """What a caller needs to act on: who, how much, which state, what to look at."""
    issues = evaluation["issues"]
    return {
        "ok": True,
        "fingerprint": fingerprint,
        "reference": canonical["reference"],
        "parties": [f"{p['name']} ({p['role']})" for p in canonical["parties"]],
        "currency": evaluation["currency"],
        "as_of": evaluation["as_of"],
        "status": evaluation["status"],
        "contract_value": evaluation["contract_value"],
        "total": evaluation["total"],
        "tax_total": evaluation["tax_total"],
        "schedule_total": evaluation["schedule_total"],
        "due_to_date": evaluation["due_to_date"],
        "next_due": evaluation["next_due"],
        "conditions_in_force": len(evaluation["conditions_in_force"]),
        "issues": [issue["code"] for issue in issues],
        "issue_details": issues,
        "verdict": VERDICT_ATTENTION if issues else VERDICT_CLEAN,
    }
