"""Contract model, canonical form, fingerprint, evaluation and phase pass-through (in-process)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from taskfleet.config import ConfigError
from taskfleet.config.exposure import get_exposure_settings
from taskfleet.contracts import PHASES, fingerprint_of, normalise, process, run_phase
from taskfleet.contracts.model import Contract, validate_document
from taskfleet.contracts.notify import WebhookRefused, check_url, load_notify_settings
from taskfleet.contracts.pipeline import gather

AS_OF = "2025-03-01"


def doc(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "reference": "C-100",
        "parties": [{"name": "Acme Ltd", "role": "seller"}, {"name": "Bob", "role": "buyer"}],
        "currency": "EUR",
        "line_items": [
            {"description": "Widget", "quantity": "3", "unit_price": "10.15", "tax_rate": "0.2"},
            {"description": "Service", "quantity": "1.5", "unit_price": "100"},
        ],
        "payment_schedule": [
            {"due_date": "2025-02-01", "amount": "100.00"},
            {"due_date": "2025-04-01", "amount": "86.54"},
        ],
        "effective_date": "2025-01-01",
        "expiry_date": "2025-12-31",
        "metadata": {"source": "unit", "score": 2.0},
    }
    return base | overrides


def fp(document: dict[str, Any]) -> str:
    contract = validate_document(document)
    assert isinstance(contract, Contract), contract
    return fingerprint_of(normalise(contract))


def test_equivalent_documents_share_a_fingerprint() -> None:
    variant = copy.deepcopy(doc())
    variant["currency"] = " eur "
    variant["parties"].reverse()
    variant["parties"][0]["role"] = "BUYER"
    variant["line_items"][0]["unit_price"] = "10.150"
    variant["line_items"][1]["quantity"] = "1.50"
    variant["line_items"][1]["unit_price"] = 100
    variant["payment_schedule"].reverse()
    variant["metadata"] = {"score": 2, "source": "unit"}
    variant["title"] = None
    assert fp(variant) == fp(doc())
    assert process(variant, AS_OF) == process(doc(), AS_OF)


@pytest.mark.parametrize(
    "change",
    [
        {"reference": "C-101"},
        {"currency": "USD"},
        {"expiry_date": "2026-01-01"},
        {"metadata": {"source": "other"}},
    ],
)
def test_any_real_change_changes_the_fingerprint(change: dict[str, Any]) -> None:
    assert fp(doc(**change)) != fp(doc())


def test_line_item_order_is_part_of_the_contract() -> None:
    swapped = doc()
    swapped["line_items"] = list(reversed(swapped["line_items"]))
    assert fp(swapped) != fp(doc())


def test_canonical_form_uses_strings_for_money_and_iso_dates() -> None:
    contract = validate_document(
        doc(
            currency="jpy",
            line_items=[],
            payment_schedule=[{"due_date": "2025-02-01", "amount": "1000"}],
        )
    )
    assert isinstance(contract, Contract)
    canonical = normalise(contract)
    assert canonical["currency"] == "JPY"
    assert canonical["payment_schedule"] == [{"due_date": "2025-02-01", "amount": "1000"}]
    assert canonical["metadata"] == {"source": "unit", "score": 2}


def test_evaluation_figures() -> None:
    summary = process(doc(), AS_OF)
    # 3 x 10.15 = 30.45, tax 6.09; 1.5 x 100 = 150.00 -> subtotal 180.45, total 186.54
    assert summary["ok"] is True
    assert summary["total"] == "186.54"
    assert summary["tax_total"] == "6.09"
    assert summary["schedule_total"] == "186.54"
    assert summary["due_to_date"] == "100.00"
    assert summary["next_due"] == {"due_date": "2025-04-01", "amount": "86.54"}
    assert summary["status"] == "active"
    assert summary["verdict"] == "clean"
    assert summary["parties"] == ["Acme Ltd (seller)", "Bob (buyer)"]  # sorted


def test_tax_rounds_half_even_per_line() -> None:
    items = [{"description": "x", "quantity": "1", "unit_price": "0.25", "tax_rate": "0.1"}]
    result = process(doc(line_items=items, payment_schedule=[]), AS_OF)
    assert result["tax_total"] == "0.02"  # 0.025 -> 0.02 (half-even), not 0.03


def test_schedule_checks_and_condition_states() -> None:
    document = doc(
        payment_schedule=[
            {"due_date": "2024-12-01", "amount": "100.00"},
            {"due_date": "2025-04-01", "amount": "50.00"},
        ],
        conditions=[
            {"id": "exclusive", "text": "Exclusive supply", "excludes": ["open"]},
            {"id": "open", "text": "Open supply", "starts_on": "2025-02-01"},
            {"id": "trial", "text": "Trial period", "expires_on": "2025-01-31"},
        ],
    )
    result = process(document, AS_OF)
    assert result["verdict"] == "attention"
    assert sorted(result["issues"]) == [
        "condition_expired",
        "conditions_conflict",
        "installment_outside_validity",
        "schedule_total_mismatch",
    ]
    assert result["conditions_in_force"] == 2
    before_open = process(document, "2025-01-15")
    assert "conditions_conflict" not in before_open["issues"]
    assert "condition_expired" not in before_open["issues"]


def test_status_follows_as_of() -> None:
    assert process(doc(), "2024-06-01")["status"] == "pending"
    expired = process(doc(), "2026-06-01")
    assert expired["status"] == "expired"
    assert "contract_expired" in expired["issues"]


def _errors(document: Any) -> dict[str, str]:
    result = process(document, AS_OF)
    assert result["ok"] is False
    assert result["phase"] == "validate"
    return {e["loc"]: e["type"] for e in result["errors"]}


def test_malformed_documents_come_back_as_field_errors() -> None:
    bad = doc(currency="XYZ", effective_date="01/02/2025", parties=[{"name": "A", "role": "x"}])
    bad["line_items"][0]["quantity"] = 1.5
    bad["line_items"][1]["unit_price"] = "-1"
    bad["surprise"] = True
    errors = _errors(bad)
    assert set(errors) >= {
        "currency",
        "effective_date",
        "parties",
        "line_items.0.quantity",
        "line_items.1.unit_price",
        "surprise",
    }
    assert _errors(["not", "an", "object"]) == {"": "not_an_object"}


def test_cross_field_errors_name_the_field() -> None:
    bad = doc(
        expiry_date="2024-01-01",
        line_items=[{"description": "x", "quantity": "1", "unit_price": "1.005"}],
        conditions=[{"id": "a", "text": "t", "excludes": ["ghost"]}],
    )
    errors = _errors(bad)
    assert errors == {
        "expiry_date": "date_order",
        "line_items.0.unit_price": "money_precision",
        "conditions.0.excludes.0": "unknown_condition",
    }
    assert _errors(doc(line_items=[], payment_schedule=[])) == {"line_items": "missing_terms"}


@pytest.mark.parametrize("phase", PHASES)
def test_every_phase_passes_a_rejection_through(phase: str) -> None:
    rejection = run_phase("validate", doc(currency="nope"))
    assert rejection["ok"] is False
    assert run_phase(phase, rejection, AS_OF) == rejection  # type: ignore[arg-type]


def test_a_phase_run_alone_on_a_document_runs_the_earlier_ones() -> None:
    fingerprinted = run_phase("fingerprint", doc())
    assert fingerprinted["contract_stage"] == "fingerprinted"
    assert fingerprinted["fingerprint"] == fp(doc())
    step_by_step: Any = doc()
    for phase in PHASES:
        step_by_step = run_phase(phase, step_by_step, AS_OF)
    assert step_by_step == process(doc(), AS_OF)


def test_a_malformed_envelope_is_rejected_not_raised() -> None:
    forged = {"contract_stage": "fingerprinted", "canonical": {"currency": "EUR"}}
    result = run_phase("evaluate", forged, AS_OF)
    assert result["ok"] is False
    assert result["errors"][0]["type"] == "malformed_envelope"
    unknown = run_phase("summarise", {"contract_stage": "weird"}, AS_OF)
    assert unknown["errors"][0]["type"] == "malformed_envelope"


def test_gather_counts_and_totals_per_currency() -> None:
    results = [process(doc(), AS_OF), process(doc(currency="x"), AS_OF), process(doc(), AS_OF)]
    gathered = gather(results)
    assert (gathered["count"], gathered["accepted"], gathered["rejected"]) == (3, 2, 1)
    assert gathered["value_by_currency"] == {"EUR": "373.08"}
    assert gathered["results"] == results


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "gopher://h/",
        "http:///nohost",
        "https://user:pw@example.com/hook",
        "not a url",
    ],
)
def test_webhook_urls_other_than_plain_http_are_refused(url: str) -> None:
    with pytest.raises(WebhookRefused):
        check_url(url)


def test_webhook_url_http_and_https_are_accepted() -> None:
    assert check_url("https://hooks.example.com/a?b=1").host == "hooks.example.com"
    assert check_url("http://93.184.216.34:8080/x").port == 8080


@pytest.fixture
def exposure_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """The environment, read afresh by ``get_exposure_settings`` (and forgotten after)."""
    get_exposure_settings.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    get_exposure_settings.cache_clear()


def test_a_loopback_literal_is_refused_unless_allowed(exposure_env: pytest.MonkeyPatch) -> None:
    exposure_env.delenv("TASKFLEET_OUTBOUND_ALLOW", raising=False)
    with pytest.raises(WebhookRefused, match="loopback"):
        check_url("http://127.0.0.1:6379/")
    exposure_env.setenv("TASKFLEET_OUTBOUND_ALLOW", "127.0.0.0/8")
    get_exposure_settings.cache_clear()
    assert check_url("http://127.0.0.1:8080/x").port == 8080


def test_notify_settings_errors_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKFLEET_CONTRACT_NOTIFY_TIMEOUT", "-1")
    with pytest.raises(ConfigError, match="TASKFLEET_CONTRACT_NOTIFY_TIMEOUT"):
        load_notify_settings()


def test_reuse_key_is_fingerprint_and_day() -> None:
    from taskfleet.contracts.pipeline import reuse_key

    assert reuse_key((doc(),), {"as_of": AS_OF}) == f"{fp(doc())}:{AS_OF}"
    assert reuse_key((doc(), "2025-04-01"), {}) == f"{fp(doc())}:2025-04-01"
    assert reuse_key((doc(currency="bad"),), {}) is None
