"""Derived figures of a canonical contract: totals, schedule checks, condition states.

Works on the canonical form (strings for money and dates), so it gives the same answer
wherever it runs, for a given ``as_of`` date. Money arithmetic is ``Decimal``; each line's
amount and tax are rounded half-even to the currency's minor unit, then summed.
"""

from __future__ import annotations

import datetime as dt
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, TypedDict

from taskfleet.contracts.canonical import money_text
from taskfleet.contracts.currency import quantum


class Issue(TypedDict):
    """Something a reader of the contract should look at (not a validation error)."""

    code: str
    loc: str
    msg: str


def _round(value: Decimal, currency: str) -> Decimal:
    return value.quantize(quantum(currency), rounding=ROUND_HALF_EVEN)


def _day(text: str | None) -> dt.date | None:
    return None if text is None else dt.date.fromisoformat(text)


def _in_force(start: dt.date | None, end: dt.date | None, on: dt.date) -> bool:
    return (start is None or start <= on) and (end is None or on <= end)


def validity_status(effective: dt.date, expiry: dt.date | None, as_of: dt.date) -> str:
    """``pending`` before the effective date, ``expired`` after expiry, else ``active``."""
    if as_of < effective:
        return "pending"
    if expiry is not None and as_of > expiry:
        return "expired"
    return "active"


def evaluate(canonical: dict[str, Any], as_of: dt.date) -> dict[str, Any]:
    """Totals, schedule checks and condition states of ``canonical`` on ``as_of``."""
    cur: str = canonical["currency"]
    issues: list[Issue] = []
    subtotal = tax_total = Decimal(0)
    for item in canonical["line_items"]:
        amount = _round(Decimal(item["quantity"]) * Decimal(item["unit_price"]), cur)
        subtotal += amount
        tax_total += _round(amount * Decimal(item["tax_rate"]), cur)
    total = subtotal + tax_total

    effective = dt.date.fromisoformat(canonical["effective_date"])
    expiry = _day(canonical.get("expiry_date"))
    schedule = canonical["payment_schedule"]
    schedule_total = sum((Decimal(s["amount"]) for s in schedule), Decimal(0))
    due_to_date = Decimal(0)
    next_due: dict[str, str] | None = None
    for i, inst in enumerate(schedule):
        due = dt.date.fromisoformat(inst["due_date"])
        if not _in_force(effective, expiry, due):
            issues.append(
                Issue(
                    code="installment_outside_validity",
                    loc=f"payment_schedule.{i}.due_date",
                    msg=f"due {inst['due_date']}, outside the contract's validity",
                )
            )
        if due <= as_of:
            due_to_date += Decimal(inst["amount"])
        elif next_due is None:
            next_due = {"due_date": inst["due_date"], "amount": inst["amount"]}
    if canonical["line_items"] and schedule and schedule_total != total:
        issues.append(
            Issue(
                code="schedule_total_mismatch",
                loc="payment_schedule",
                msg=f"installments add up to {money_text(schedule_total, cur)}, "
                f"the line items to {money_text(total, cur)} {cur}",
            )
        )

    status = validity_status(effective, expiry, as_of)
    if status == "expired":
        issues.append(Issue(code="contract_expired", loc="expiry_date", msg="contract expired"))
    conditions = canonical["conditions"]
    in_force: dict[str, bool] = {}
    expired: list[str] = []
    for c in conditions:
        start, end = _day(c.get("starts_on")), _day(c.get("expires_on"))
        in_force[c["id"]] = _in_force(start, end, as_of)
        if end is not None and end < as_of:
            expired.append(c["id"])
            issues.append(
                Issue(
                    code="condition_expired",
                    loc=f"conditions.{c['id']}",
                    msg=f"condition {c['id']} expired on {c['expires_on']}",
                )
            )
    conflicts = sorted(
        {
            tuple(sorted((c["id"], other)))
            for c in conditions
            for other in c.get("excludes", ())
            if in_force[c["id"]] and in_force.get(other, False)
        }
    )
    for a, b in conflicts:
        issues.append(
            Issue(
                code="conditions_conflict",
                loc=f"conditions.{a}",
                msg=f"conditions {a} and {b} exclude each other but are both in force",
            )
        )
    contract_value = total if canonical["line_items"] else schedule_total
    return {
        "as_of": as_of.isoformat(),
        "status": status,
        "currency": cur,
        "subtotal": money_text(subtotal, cur),
        "tax_total": money_text(tax_total, cur),
        "total": money_text(total, cur),
        "schedule_total": money_text(schedule_total, cur),
        "contract_value": money_text(contract_value, cur),
        "due_to_date": money_text(due_to_date, cur),
        "next_due": next_due,
        "installments": len(schedule),
        "line_items": len(canonical["line_items"]),
        "conditions_in_force": sorted(k for k, v in in_force.items() if v),
        "conditions_expired": expired,
        "conflicts": [list(pair) for pair in conflicts],
        "issues": issues,
    }
