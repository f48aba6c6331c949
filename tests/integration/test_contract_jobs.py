"""Contract jobs through real workers on the Redis broker: chains, chords, dedup, webhooks.

The fleet here consumes queues of its own, so the session fleets' workers never see these jobs.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis
from celery import Celery

from taskfleet.client import Client
from taskfleet.config import load_settings
from taskfleet.config.exposure import OutboundAllow, get_exposure_settings
from taskfleet.contracts import process
from taskfleet.contracts.api import process_batch, process_contract, request_key, run_phase
from taskfleet.contracts.notify import (
    WebhookDeliveryError,
    WebhookRefused,
    deliver,
    load_notify_settings,
)
from taskfleet.outbound import outbound_client
from taskfleet.resilience.dlq import DeadLetterQueues
from taskfleet.workers.profiles import cpu_profile, io_profile
from tests.support.waiting import wait_for
from tests.support.workers import Fleet, is_cpu_node

AS_OF = "2025-03-01"
LOOPBACK = "127.0.0.1"
#: Loopback too, but not allowed: nothing listens there, and the policy refuses it first.
OTHER_LOOPBACK = "127.0.0.2"
ALLOW_LOOPBACK = OutboundAllow(networks=(ipaddress.ip_network(LOOPBACK),))
BIG_RESPONSE_BYTES = 1024 * 1024
SLOW_HANDLER_MAX_S = 10.0


@pytest.fixture(scope="module", autouse=True)
def producer_allows_loopback() -> Iterator[None]:
    """This process (the producer) allows the loopback receiver too: ``notify_url`` is
    checked when a contract is sent."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("TASKFLEET_OUTBOUND_ALLOW", LOOPBACK)
        get_exposure_settings.cache_clear()
        yield
    get_exposure_settings.cache_clear()


@pytest.fixture(scope="module")
def fleet(redis_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    env = {
        **redis_env,
        "TASKFLEET_CPU_QUEUE": redis_env["TASKFLEET_CPU_QUEUE"] + "-contract",
        "TASKFLEET_IO_QUEUE": redis_env["TASKFLEET_IO_QUEUE"] + "-contract",
        # The receiver below listens on loopback, which webhooks refuse by default.
        "TASKFLEET_OUTBOUND_ALLOW": LOOPBACK,
    }
    running = Fleet(env, tmp_path_factory.mktemp("contract-fleet"))
    settings = load_settings(**running.settings_overrides)
    try:
        running.start_all([(cpu_profile(settings, 2), "cpu"), (io_profile(settings, 10), "io")])
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def client(fleet: Fleet) -> Iterator[Client]:
    producer = Client(fleet.app())
    yield producer
    producer.close()


@pytest.fixture(scope="module")
def app(client: Client) -> Celery:
    return client.app


def contract(reference: str | None = None, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "reference": reference or f"IT-{uuid.uuid4().hex[:10]}",
        "parties": [{"name": "Acme", "role": "seller"}, {"name": "Bob", "role": "buyer"}],
        "currency": "USD",
        "line_items": [{"description": "Widget", "quantity": "4", "unit_price": "2.50"}],
        "effective_date": "2025-01-01",
    }
    return base | overrides


def _worker(redis_client: redis.Redis, job_id: str) -> str:
    raw = redis_client.get(f"celery-task-meta-{job_id}")
    assert raw is not None
    return str(json.loads(raw)["worker"])


@pytest.mark.parametrize("pipeline", ["fast", "chain"])
def test_batch_runs_through_a_chord(
    app: Celery, redis_client: redis.Redis, pipeline: str, client: Client
) -> None:
    docs = [
        contract(),
        contract(
            currency="eur", line_items=[{"description": "x", "quantity": "3", "unit_price": "1.10"}]
        ),
        contract(
            currency="JPY", line_items=[{"description": "y", "quantity": "2", "unit_price": "500"}]
        ),
        contract(currency="nope"),
        contract(parties=[]),
    ]
    handle = process_batch(docs, client, as_of=AS_OF, pipeline=pipeline)
    batch = handle.result(60)
    assert (batch["count"], batch["accepted"], batch["rejected"]) == (5, 3, 2)
    assert batch["value_by_currency"] == {"EUR": "3.30", "JPY": "1000", "USD": "10.00"}
    # contract.process results say whether they came from the result cache (issue 6)
    without_flag = [{k: v for k, v in r.items() if k != "cache_hit"} for r in batch["results"]]
    assert without_flag == [process(d, AS_OF) for d in docs]
    assert batch["results"][3]["errors"][0]["loc"] == "currency"
    assert is_cpu_node(_worker(redis_client, handle.id))


def ready_meta(app: Celery, job_id: str) -> dict[str, Any] | None:
    """The stored result of ``job_id`` once it is final, else None."""
    meta: dict[str, Any] = app.backend.get_task_meta(job_id)
    return meta if meta["status"] in ("SUCCESS", "FAILURE") else None


def test_chain_runs_five_jobs_and_matches_the_fast_path(app: Celery, client: Client) -> None:
    document = contract()
    handle = process_contract(document, client, as_of=AS_OF, pipeline="chain")
    summary = handle.result(60)
    assert summary == process(document, AS_OF)
    assert summary["total"] == "10.00"
    assert summary["fingerprint"] == handle.fingerprint
    names = []
    job_id: str | None = handle.id
    while job_id is not None:
        # Celery sends a chain's next job before it stores the current one's result, so a
        # parent's result may land a moment after its child's.
        meta = wait_for(
            lambda jid=job_id: ready_meta(app, jid), 10, f"the result of chain job {job_id}"
        )
        names.append(meta["name"])
        job_id = meta.get("parent_id")
    assert names == [
        f"contract.{p}" for p in ("summarise", "evaluate", "fingerprint", "normalise", "validate")
    ]


def test_chain_ends_with_the_validation_errors_as_its_result(app: Celery, client: Client) -> None:
    bad = contract(currency="dollars", effective_date="yesterday")
    handle = process_contract(bad, client, as_of=AS_OF, pipeline="chain")
    result = handle.result(60)
    assert handle.async_result.state == "SUCCESS"
    assert result["ok"] is False
    assert result["phase"] == "validate"
    assert {e["loc"] for e in result["errors"]} == {"currency", "effective_date"}


def test_same_contract_twice_is_served_from_the_result_store(app: Celery, client: Client) -> None:
    document = contract()
    first = process_contract(document, client, as_of=AS_OF)
    summary = first.result(60)
    same = contract(
        document["reference"],
        currency="usd",
        parties=list(reversed(document["parties"])),
        line_items=[{"description": "Widget", "quantity": "4.0", "unit_price": "2.5"}],
    )
    again = process_contract(same, client, as_of=AS_OF)
    assert again.deduplicated
    assert not first.deduplicated
    assert again.id == first.id
    assert again.fingerprint == first.fingerprint == summary["fingerprint"]
    assert again.result(5) == summary
    later = process_contract(document, client, as_of="2025-04-01")
    assert later.id != first.id  # another evaluation date is another job


def test_a_single_phase_runs_alone(app: Celery, client: Client) -> None:
    document = contract()
    fingerprinted = run_phase("fingerprint", document, client).result(30)
    assert fingerprinted["contract_stage"] == "fingerprinted"
    assert fingerprinted["fingerprint"] == request_key(document)[1]
    evaluated = run_phase("evaluate", fingerprinted, client, as_of=AS_OF).result(30)
    assert evaluated["evaluation"]["total"] == "10.00"
    assert evaluated["evaluation"]["as_of"] == AS_OF


# -- webhook -----------------------------------------------------------------------------


class Hook:
    """A local HTTP server (127.0.0.1 only) that records what it receives."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.release = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                hook.received.append((self.path, dict(self.headers), body))
                if self.path == "/slow":
                    hook.release.wait(SLOW_HANDLER_MAX_S)
                status = 500 if self.path == "/fail" else 200
                payload = b"x" * BIG_RESPONSE_BYTES if self.path == "/big" else b'{"ok":true}'
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                with contextlib.suppress(OSError):  # the client stopped reading (bounded)
                    self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def bodies(self, path: str) -> list[bytes]:
        return [body for p, _, body in self.received if p == path]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook()
    yield server
    server.close()


def test_result_is_posted_to_the_webhook_by_the_io_pool(
    app: Celery, hook: Hook, redis_client: redis.Redis, client: Client
) -> None:
    document = contract()
    handle = process_contract(document, client, as_of=AS_OF, notify_url=hook.url("/done"))
    summary = handle.result(60)
    wait_for(lambda: hook.bodies("/done"), 30, "the webhook to receive the result")
    assert json.loads(hook.bodies("/done")[0]) == summary
    headers = next(h for p, h, _ in hook.received if p == "/done")
    assert headers["Idempotency-Key"] == summary["fingerprint"]
    direct = app.signature("contract.notify", args=(summary, hook.url("/direct"))).apply_async()
    delivered = direct.get(timeout=30)
    assert delivered["delivered"] is True
    assert delivered["status_code"] == 200
    # What the webhook answered stays out of the result: its status and size only.
    assert set(delivered) == {
        "delivered",
        "status_code",
        "response_bytes",
        "truncated",
        "idempotency_key",
    }
    assert _worker(redis_client, direct.id).startswith("io-")


def test_webhook_failures_fail_the_job(app: Celery, hook: Hook, client: Client) -> None:
    failing = app.signature("contract.notify", args=({"ok": True}, hook.url("/fail"))).apply_async()
    refused = app.signature(
        "contract.notify", args=({"ok": True}, "file:///etc/passwd")
    ).apply_async()
    for result, error in ((failing, "WebhookDeliveryError"), (refused, "WebhookRefused")):
        result.get(timeout=30, propagate=False)
        assert result.state == "FAILURE"
        assert type(result.result).__name__ == error
    with pytest.raises(WebhookRefused):
        process_contract(contract(), client, notify_url="gopher://127.0.0.1/")


def test_a_refused_webhook_is_dead_lettered_with_its_reason(
    app: Celery, hook: Hook, fleet: Fleet
) -> None:
    url = hook.url("/refused").replace(LOOPBACK, OTHER_LOOPBACK)
    refused = app.signature("contract.notify", args=({"ok": True}, url)).apply_async()
    refused.get(timeout=30, propagate=False)
    assert refused.state == "FAILURE"
    assert type(refused.result).__name__ == "WebhookRefused"
    dlqs = DeadLetterQueues(load_settings(**fleet.settings_overrides))
    letter = wait_for(lambda: dlqs.show(refused.id), 30, "the refused webhook's dead letter")
    assert letter.reason == "non_retryable"
    assert letter.exc_type == "WebhookRefused"
    assert f"{OTHER_LOOPBACK} is a loopback address" in letter.exc_message
    assert letter.attempts == 1
    assert hook.received == []
    assert fleet.procs["io"].poll() is None  # the worker lives on, and delivers
    allowed = app.signature("contract.notify", args=({"ok": True}, hook.url("/after")))
    assert allowed.apply_async().get(timeout=30)["delivered"] is True


def test_webhook_response_read_is_bounded_and_times_out(hook: Hook) -> None:
    # The bounded read must succeed however slowly the local server answers: a generous
    # timeout. The timeout case needs a short one, against a server that holds its answer
    # until the test ends (or SLOW_HANDLER_MAX_S): it times out on any machine.
    client = outbound_client(ALLOW_LOOPBACK)
    bounded = load_notify_settings(max_response_bytes=1024, timeout=30, connect_timeout=30)
    answer = deliver({"ok": True}, hook.url("/big"), settings=bounded, client=client)
    assert answer["truncated"] is True
    assert answer["response_bytes"] == 1024
    short = load_notify_settings(max_response_bytes=1024, timeout=0.5, connect_timeout=30)
    with pytest.raises(WebhookDeliveryError, match="Timeout"):
        deliver({"ok": True}, hook.url("/slow"), settings=short, client=client)
    too_big = load_notify_settings(max_request_bytes=1024)
    with pytest.raises(WebhookRefused, match="over 1024"):
        deliver({"pad": "x" * 2000}, hook.url("/done"), settings=too_big, client=client)
    assert hook.bodies("/done") == []
    client.close()


def test_process_contract_rejects_an_unknown_as_of(client: Client) -> None:
    with pytest.raises(ValueError, match="Invalid isoformat"):
        process_contract(contract(), client, as_of="soon")
