"""Outbound HTTP is safe by default (issue 19, item 5): refused before anything connects.

Only loopback is ever connected to: the webhook receiver is a local server on 127.0.0.1,
names resolve through a resolver the test controls (:func:`fake_dns`), and every connection
of this process is recorded, any to a non-loopback address blocked (:func:`connections`).
A refused private, link-local or metadata address must leave no connection at all.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from taskfleet.config.exposure import OutboundAllow
from taskfleet.contracts.notify import WebhookDeliveryError, WebhookRefused, check_url, deliver
from taskfleet.outbound import OutboundRefused, outbound_client
from tests.support.netguard import connections, fake_dns

LOOPBACK = "127.0.0.1"
ALLOW_LOOPBACK = OutboundAllow(networks=(ipaddress.ip_network(LOOPBACK),))
RESULT_KEYS = {"delivered", "status_code", "response_bytes", "truncated", "idempotency_key"}
SECRET_ANSWER = b'{"AccessKeyId":"not-for-the-result"}'
INSIDE = "inside.test"  # resolves to the address under test
REFUSED = [
    ("10.0.0.5", "private"),
    ("172.16.3.4", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "not globally reachable"),
    ("169.254.1.1", "link-local"),
    ("169.254.169.254", "cloud metadata"),
    ("169.254.170.2", "cloud metadata"),
    ("100.100.100.200", "cloud metadata"),
    ("168.63.129.16", "cloud metadata"),
    ("fd00:ec2::254", "cloud metadata"),
    ("fe80::1", "link-local"),
    ("fc00::1", "private"),
    ("::ffff:10.0.0.1", "private"),
    ("64:ff9b::a9fe:a9fe", "cloud metadata"),
    ("224.0.0.251", "multicast"),
    ("0.0.0.0", "unspecified"),
    ("240.0.0.1", "address"),
    ("127.0.0.1", "loopback"),
    ("::1", "loopback"),
]


class Receiver:
    """A webhook receiver on loopback: records requests; ``/to-inside`` redirects inside."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                self.rfile.read(length)
                receiver.received.append((self.path, str(self.headers.get("Host"))))
                if self.path == "/to-inside":
                    self.send_response(307)
                    self.send_header("Location", f"http://{INSIDE}/latest/meta-data/")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(SECRET_ANSWER)))
                self.end_headers()
                self.wfile.write(SECRET_ANSWER)

            do_GET = _answer  # noqa: N815 - http.server's names
            do_POST = _answer  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str, host: str = LOOPBACK) -> str:
        return f"http://{host}:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def _client(allow: OutboundAllow, *, follow_redirects: bool = False) -> httpx.Client:
    return outbound_client(allow, follow_redirects=follow_redirects)


@pytest.mark.parametrize(("address", "reason"), REFUSED, ids=[a for a, _ in REFUSED])
def test_a_name_resolving_inside_is_refused_before_any_connection(
    monkeypatch: pytest.MonkeyPatch, address: str, reason: str
) -> None:
    looked_up = fake_dns(monkeypatch, {INSIDE: [address]})
    with (
        connections() as connected,
        _client(OutboundAllow()) as client,
        pytest.raises(WebhookRefused, match=reason),
    ):
        deliver({"ok": True}, f"http://{INSIDE}:8080/hook", client=client)
    assert connected == []
    assert looked_up == [INSIDE]


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://100.100.100.200/latest/meta-data/",
        "http://10.1.2.3:6379/",
        "http://127.0.0.1:6379/",
        "http://[::1]:5432/",
    ],
)
def test_an_address_literal_is_refused_when_the_url_is_checked(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    looked_up = fake_dns(monkeypatch, {})
    with connections() as connected, pytest.raises(WebhookRefused, match="refused"):
        check_url(url)
    assert connected == []
    assert looked_up == []


def test_a_metadata_host_name_is_refused_without_a_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    looked_up = fake_dns(monkeypatch, {"metadata.google.internal": ["169.254.169.254"]})
    with (
        connections() as connected,
        _client(OutboundAllow()) as client,
        pytest.raises(WebhookRefused, match="metadata host name"),
    ):
        deliver({}, "http://metadata.google.internal/computeMetadata/v1/", client=client)
    assert connected == []
    assert looked_up == []


def test_one_inside_address_among_public_ones_refuses_the_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_dns(monkeypatch, {"mixed.test": ["93.184.216.34", "10.0.0.7"]})
    with (
        connections() as connected,
        _client(OutboundAllow()) as client,
        pytest.raises(WebhookRefused, match=r"10\.0\.0\.7 is a private address"),
    ):
        deliver({}, "http://mixed.test/hook", client=client)
    assert connected == []


def test_loopback_is_refused_by_default(receiver: Receiver) -> None:
    with (
        connections() as connected,
        _client(OutboundAllow()) as client,
        pytest.raises(WebhookRefused, match="loopback"),
    ):
        deliver({"ok": True}, receiver.url("/hook"), client=client)
    assert connected == []
    assert receiver.received == []


def test_an_allowed_loopback_receiver_gets_the_result_and_nothing_comes_back(
    receiver: Receiver,
) -> None:
    with connections() as connected, _client(ALLOW_LOOPBACK) as client:
        answer = deliver({"ok": True}, receiver.url("/hook"), client=client)
    assert set(answer) == RESULT_KEYS
    assert answer["status_code"] == 200
    assert SECRET_ANSWER.decode() not in repr(answer)
    assert connected == [LOOPBACK]
    assert [path for path, _ in receiver.received] == ["/hook"]


def test_the_vetted_address_is_the_one_connected_to(
    monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    """A second lookup would answer inside (DNS rebinding): there is none, and the request
    still names the host it was sent to (Host header)."""
    answers = iter([[LOOPBACK]])
    looked_up = fake_dns(monkeypatch, {"hooks.test": lambda: next(answers, ["10.0.0.9"])})
    allow = OutboundAllow(hosts=frozenset({"hooks.test"}))
    with connections() as connected, _client(allow) as client:
        answer = deliver({"ok": True}, receiver.url("/hook", "hooks.test"), client=client)
    assert answer["status_code"] == 200
    assert looked_up == ["hooks.test"]
    assert connected == [LOOPBACK]
    assert receiver.received == [("/hook", f"hooks.test:{receiver.port}")]


def test_an_allowed_host_name_never_opens_a_metadata_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_dns(monkeypatch, {"hooks.test": ["169.254.169.254"]})
    allow = OutboundAllow(hosts=frozenset({"hooks.test"}))
    with (
        connections() as connected,
        _client(allow) as client,
        pytest.raises(WebhookRefused, match="cloud metadata"),
    ):
        deliver({}, "http://hooks.test/hook", client=client)
    assert connected == []


def test_a_redirect_inside_is_refused_before_connecting(
    monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    """Every hop is vetted: a client that follows redirects refuses the hop inside."""
    looked_up = fake_dns(monkeypatch, {INSIDE: ["10.20.30.40"]})
    with (
        connections() as connected,
        _client(ALLOW_LOOPBACK, follow_redirects=True) as client,
        pytest.raises(OutboundRefused, match=r"10\.20\.30\.40 is a private address"),
    ):
        client.post(receiver.url("/to-inside"), content=b"{}")
    assert connected == [LOOPBACK]
    assert looked_up == [INSIDE]
    assert [path for path, _ in receiver.received] == ["/to-inside"]


def test_a_webhook_does_not_follow_a_redirect(
    monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    looked_up = fake_dns(monkeypatch, {INSIDE: ["169.254.169.254"]})
    with (
        connections() as connected,
        _client(ALLOW_LOOPBACK) as client,
        pytest.raises(WebhookDeliveryError, match="answered 307"),
    ):
        deliver({}, receiver.url("/to-inside"), client=client)
    assert connected == [LOOPBACK]
    assert looked_up == []
