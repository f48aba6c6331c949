"""Result reuse on real workers: cacheable jobs are answered from the cache, and say so."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from taskfleet.client import Client
from tests.support.workers import Fleet
from tests.unit.test_contracts import AS_OF, doc

pytestmark = pytest.mark.usefixtures("clean_state")


def test_same_contract_as_new_job_is_a_cache_hit(redis_fleet: Fleet) -> None:
    client = Client(redis_fleet.app())
    document = doc(reference=f"C-{uuid.uuid4().hex[:8]}")  # fresh fingerprint per test run
    first = client.enqueue("contract.process", document)
    computed: dict[str, Any] = first.result(60)
    second = client.enqueue("contract.process", document)  # a different job id, same document
    assert first.id != second.id
    reused: dict[str, Any] = second.result(60)
    assert computed["cache_hit"] is False
    assert reused["cache_hit"] is True
    strip = {k: v for k, v in computed.items() if k != "cache_hit"}
    assert {k: v for k, v in reused.items() if k != "cache_hit"} == strip


def test_sandbox_run_reused_only_when_the_caller_declares_it(redis_fleet: Fleet) -> None:
    client = Client(redis_fleet.app())
    source = f"print('{uuid.uuid4().hex}')"
    plain = [client.enqueue("sandbox.run", {"source": source}) for _ in range(2)]
    plain_results = [h.result(60) for h in plain]
    assert all("cache_hit" not in r for r in plain_results)  # ran twice, no reuse asked
    first = client.enqueue("sandbox.run", {"source": source, "reuse": True}).result(60)
    second = client.enqueue("sandbox.run", {"source": source, "reuse": True}).result(60)
    assert first["cache_hit"] is False
    assert second["cache_hit"] is True
    assert second["stdout"] == first["stdout"]


def test_contract_reuse_respects_the_evaluation_date(redis_fleet: Fleet) -> None:
    client = Client(redis_fleet.app())
    document = doc(reference=f"C-{uuid.uuid4().hex[:8]}")
    today = client.enqueue("contract.process", document).result(60)
    other_day = client.app.send_task(
        "contract.process", args=[document, AS_OF], queue=client.topology.cpu_queue
    )
    assert other_day.get(timeout=60)["cache_hit"] is False  # different as_of: computed again
    assert today["cache_hit"] is False
