"""The contract document model, and validation that reports field-level errors as data.

A document is a JSON object. Money and quantities are decimal strings (or integers), never
binary floats; dates are ISO 8601 strings; the currency is an ISO 4217 code. Anything
malformed comes back from :func:`validate_document` as a list of :class:`FieldError` dicts,
each naming the offending field by its dotted path (``line_items.2.unit_price``).
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Annotated, Any, TypedDict

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    ValidationError,
    field_validator,
)

from taskfleet.contracts.currency import is_known_currency, minor_units

MAX_PARTIES = 50
MAX_LINE_ITEMS = 1000
MAX_INSTALLMENTS = 600
MAX_CONDITIONS = 200
MAX_TEXT_CHARS = 2000
MAX_NAME_CHARS = 200
MAX_METADATA_BYTES = 16 * 1024
MAX_DIGITS = 24


class FieldError(TypedDict):
    """One problem with a document: where (dotted path), what kind, and a readable message."""

    loc: str
    type: str
    msg: str


def _decimal_input(value: Any) -> Any:
    """Refuse binary floats and booleans where a decimal is expected."""
    if isinstance(value, bool):
        raise ValueError("expected a decimal string or an integer, not a boolean")
    if isinstance(value, float):
        raise ValueError(
            "expected a decimal string or an integer, not a float "
            "(binary floats cannot represent most amounts exactly)"
        )
    return value


def _iso_date(value: Any) -> dt.date:
    """Parse an ISO 8601 calendar date (``2025-01-31``); refuse timestamps and datetimes."""
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    if not isinstance(value, str):
        raise ValueError("expected an ISO 8601 date string such as 2025-01-31")
    try:
        return dt.date.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 date such as 2025-01-31") from None


Amount = Annotated[Decimal, BeforeValidator(_decimal_input), Field(max_digits=MAX_DIGITS)]
IsoDate = Annotated[dt.date, BeforeValidator(_iso_date)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_CHARS)]
Slug = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$", to_lower=True)]
ConditionId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)


class Party(_Strict):
    """Someone bound by the contract."""

    name: Name
    role: Slug
    party_id: Name | None = None


class LineItem(_Strict):
    """A priced line: ``quantity`` x ``unit_price``, plus tax at ``tax_rate`` (0..1)."""

    description: Text
    quantity: Amount = Field(gt=0)
    unit_price: Amount = Field(ge=0)
    tax_rate: Amount = Field(default=Decimal(0), ge=0, le=1)
    sku: Name | None = None


class Installment(_Strict):
    """One payment due on ``due_date``."""

    due_date: IsoDate
    amount: Amount = Field(gt=0)
    label: Name | None = None


class Condition(_Strict):
    """A clause in force between ``starts_on`` and ``expires_on`` (inclusive, both optional).

    ``excludes`` names conditions that cannot be in force at the same time as this one.
    """

    id: ConditionId
    kind: Slug = "other"
    text: Text
    starts_on: IsoDate | None = None
    expires_on: IsoDate | None = None
    excludes: list[ConditionId] = Field(default_factory=list, max_length=MAX_CONDITIONS)


class Contract(_Strict):
    """A contract document."""

    reference: Name
    title: Text | None = None
    parties: list[Party] = Field(min_length=2, max_length=MAX_PARTIES)
    currency: str
    line_items: list[LineItem] = Field(default_factory=list, max_length=MAX_LINE_ITEMS)
    payment_schedule: list[Installment] = Field(default_factory=list, max_length=MAX_INSTALLMENTS)
    conditions: list[Condition] = Field(default_factory=list, max_length=MAX_CONDITIONS)
    effective_date: IsoDate
    expiry_date: IsoDate | None = None
    metadata: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("currency", mode="before")
    @classmethod
    def _iso_currency(cls, value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError("expected an ISO 4217 currency code such as EUR")
        code = value.strip().upper()
        if not is_known_currency(code):
            raise ValueError(f"{value!r} is not an ISO 4217 currency code")
        return code

    @field_validator("metadata")
    @classmethod
    def _bounded_metadata(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"metadata is {size} bytes of JSON, over {MAX_METADATA_BYTES}")
        return value


def _error(loc: tuple[str | int, ...], kind: str, msg: str) -> FieldError:
    return FieldError(loc=".".join(str(part) for part in loc), type=kind, msg=msg)


def semantic_errors(contract: Contract) -> list[FieldError]:
    """Checks across fields that a field's own type cannot express."""
    errors: list[FieldError] = []
    if not contract.line_items and not contract.payment_schedule:
        errors.append(
            _error(("line_items",), "missing_terms", "give line_items or a payment_schedule")
        )
    if contract.expiry_date is not None and contract.expiry_date < contract.effective_date:
        errors.append(
            _error(("expiry_date",), "date_order", "expiry_date is before effective_date")
        )
    places = minor_units(contract.currency)
    money = [
        (("line_items", i, "unit_price"), item.unit_price)
        for i, item in enumerate(contract.line_items)
    ] + [
        (("payment_schedule", i, "amount"), inst.amount)
        for i, inst in enumerate(contract.payment_schedule)
    ]
    for loc, amount in money:
        exponent = amount.normalize().as_tuple().exponent
        if isinstance(exponent, int) and -exponent > places:
            errors.append(
                _error(
                    loc,
                    "money_precision",
                    f"{amount} has more than {places} decimal places for {contract.currency}",
                )
            )
    ids = [c.id for c in contract.conditions]
    seen: set[str] = set()
    for i, condition in enumerate(contract.conditions):
        if condition.id in seen:
            errors.append(_error(("conditions", i, "id"), "duplicate_id", "duplicate id"))
        seen.add(condition.id)
        for j, other in enumerate(condition.excludes):
            if other == condition.id or other not in ids:
                errors.append(
                    _error(
                        ("conditions", i, "excludes", j),
                        "unknown_condition",
                        f"{other!r} is not another condition of this contract",
                    )
                )
        if (
            condition.starts_on is not None
            and condition.expires_on is not None
            and condition.expires_on < condition.starts_on
        ):
            errors.append(
                _error(("conditions", i, "expires_on"), "date_order", "expires before it starts")
            )
    return errors


def validate_document(document: Any) -> Contract | list[FieldError]:
    """The contract, or every field-level problem with the document (never raises)."""
    if not isinstance(document, dict):
        return [_error((), "not_an_object", "a contract document is a JSON object")]
    try:
        contract = Contract.model_validate(document)
    except ValidationError as exc:
        return [
            _error(tuple(err["loc"]), err["type"], err["msg"])
            for err in exc.errors(include_url=False, include_input=False)
        ]
    errors = semantic_errors(contract)
    return errors or contract
