"""Canonical form of a contract, and its fingerprint.

Two documents that say the same thing have the same canonical form, byte for byte:

* JSON with sorted keys, no insignificant whitespace, UTF-8, strings in Unicode NFC;
* optional fields that are absent or null are dropped;
* money quantised to the currency's minor unit (``"10.50"`` in USD, ``"1000"`` in JPY),
  other decimals without trailing zeros (``"2"`` for ``2.000``), all as strings;
* dates as ``YYYY-MM-DD``; currency and roles upper/lower-cased by the model;
* lists whose order means nothing are sorted (parties, installments by due date, conditions
  by id, each condition's ``excludes``); line items keep the order they were given in.

The fingerprint is the SHA-256 of that form: the contract job's natural idempotency key.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from decimal import Decimal
from typing import Any

from taskfleet.contracts.currency import quantum
from taskfleet.contracts.model import Contract

CANONICAL_VERSION = 1


def canonical_json(value: Any) -> bytes:
    """The canonical JSON encoding of an already-normalised value."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def fingerprint_of(canonical: dict[str, Any]) -> str:
    """SHA-256 (hex) of a canonical contract."""
    return hashlib.sha256(canonical_json(canonical)).hexdigest()


def decimal_text(value: Decimal) -> str:
    """A decimal without exponent or trailing zeros (``2.50`` -> ``"2.5"``; never ``-0``)."""
    if value.is_zero():
        return "0"
    return format(value.normalize(), "f")


def money_text(value: Decimal, currency: str) -> str:
    """An amount quantised to the currency's minor unit (validation refused finer amounts)."""
    text = format(value.quantize(quantum(currency)), "f")
    return text.removeprefix("-") if value.is_zero() else text


def _text(value: str) -> str:
    return unicodedata.normalize("NFC", value)


def _json_value(value: Any) -> Any:
    """Normalise free-form metadata: NFC strings and keys, integral floats as integers."""
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {_text(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value


def _compact(mapping: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if v is not None}


def _date(value: Any) -> str | None:
    return None if value is None else str(value.isoformat())


def normalise(contract: Contract) -> dict[str, Any]:
    """The canonical form of a validated contract, as a JSON-ready dict."""
    cur = contract.currency
    parties = [
        _compact({"name": _text(p.name), "role": p.role, "party_id": p.party_id})
        for p in contract.parties
    ]
    lines = [
        _compact(
            {
                "description": _text(item.description),
                "sku": item.sku,
                "quantity": decimal_text(item.quantity),
                "unit_price": money_text(item.unit_price, cur),
                "tax_rate": decimal_text(item.tax_rate),
            }
        )
        for item in contract.line_items
    ]
    schedule = [
        _compact(
            {
                "due_date": _date(inst.due_date),
                "amount": money_text(inst.amount, cur),
                "label": None if inst.label is None else _text(inst.label),
            }
        )
        for inst in contract.payment_schedule
    ]
    conditions = [
        _compact(
            {
                "id": c.id,
                "kind": c.kind,
                "text": _text(c.text),
                "starts_on": _date(c.starts_on),
                "expires_on": _date(c.expires_on),
                "excludes": sorted(set(c.excludes)) or None,
            }
        )
        for c in contract.conditions
    ]
    return _compact(
        {
            "version": CANONICAL_VERSION,
            "reference": _text(contract.reference),
            "title": None if contract.title is None else _text(contract.title),
            "currency": cur,
            "effective_date": _date(contract.effective_date),
            "expiry_date": _date(contract.expiry_date),
            "parties": sorted(parties, key=canonical_json),
            "line_items": lines,
            "payment_schedule": sorted(
                schedule, key=lambda s: (s["due_date"], Decimal(s["amount"]), canonical_json(s))
            ),
            "conditions": sorted(conditions, key=lambda c: c["id"]),
            "metadata": _json_value(dict(contract.metadata)),
        }
    )
