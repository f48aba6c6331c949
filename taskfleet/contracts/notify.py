"""Deliver a finished contract result to a caller-supplied webhook (the I/O pool's work).

One POST of the result as JSON, with connect/read/write timeouts, a bounded request body
and a bounded read of the response. Failures raise; retrying is the retry middleware's job.
The receiver gets an ``Idempotency-Key`` header (the contract's fingerprint when it has one),
so a redelivered job that posts twice is recognisable as one delivery.

The URL comes from the caller, so it is checked before anything is sent: http or https only,
a host, no credentials in it. Redirects are not followed and the environment (proxies,
``.netrc`` credentials) is not consulted, so a webhook cannot pick up the worker's secrets.
Every connection goes through :mod:`taskfleet.outbound`: the host is resolved once, and a
loopback, private, link-local, multicast, reserved or cloud metadata address is refused
before anything connects (``TASKFLEET_OUTBOUND_ALLOW`` opens specific hosts or networks).
A refusal is a :class:`WebhookRefused`: not retried, dead-lettered with its reason.

The job's result says that the webhook answered and with which status, and how much it read;
nothing of the answer's content, which a result would hand to whoever reads it.
"""

from __future__ import annotations

import ipaddress
import json
import threading
from functools import lru_cache
from typing import Any

import httpx
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from taskfleet.config import ConfigError
from taskfleet.config.exposure import get_exposure_settings
from taskfleet.outbound import OutboundRefused, outbound_client, refusal
from taskfleet.outbound.policy import allowed

ENV_PREFIX = "TASKFLEET_CONTRACT_NOTIFY_"
ALLOWED_SCHEMES = frozenset({"http", "https"})
DEFAULT_CONNECT_TIMEOUT_S = 3.0
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_REQUEST_BYTES = 256 * 1024
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024
MAX_CONNECTIONS = 100
USER_AGENT = "taskfleet-contract-notify/1"


class NotifySettings(BaseSettings):
    """Webhook delivery limits, from ``TASKFLEET_CONTRACT_NOTIFY_*``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", extra="ignore")

    connect_timeout: float = Field(DEFAULT_CONNECT_TIMEOUT_S, gt=0, le=60)
    timeout: float = Field(DEFAULT_TIMEOUT_S, gt=0, le=300)
    max_request_bytes: int = Field(DEFAULT_MAX_REQUEST_BYTES, ge=1024, le=16 * 1024 * 1024)
    max_response_bytes: int = Field(DEFAULT_MAX_RESPONSE_BYTES, ge=0, le=16 * 1024 * 1024)


def load_notify_settings(**overrides: Any) -> NotifySettings:
    """Read and validate the settings; a bad value raises ConfigError naming its variable."""
    try:
        return NotifySettings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{ENV_PREFIX}{str(err['loc'][0]).upper() if err['loc'] else ''}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid contract notify settings: {problems}") from None


@lru_cache(maxsize=1)
def notify_settings() -> NotifySettings:
    """The process-wide notify settings, read once."""
    return load_notify_settings()


class WebhookRefused(ValueError):
    """The webhook URL, its address or the body is not acceptable; retrying cannot help."""


class WebhookDeliveryError(RuntimeError):
    """The webhook could not be reached or answered with an error status."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


def check_url(url: str) -> httpx.URL:
    """The parsed webhook URL, checked before a job is sent (see :func:`parse_url`).

    A host that is an address literal is checked against the address policy here already;
    a name is resolved and checked by the worker's transport, when it connects.
    """
    parsed = parse_url(url)
    _check_literal(parsed.host)
    return parsed


def parse_url(url: str) -> httpx.URL:
    """The parsed webhook URL; raises WebhookRefused unless it is a plain http(s) URL."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise WebhookRefused(f"not a valid URL: {exc}") from None
    if parsed.scheme not in ALLOWED_SCHEMES:
        raise WebhookRefused(f"webhook scheme must be http or https, not {parsed.scheme!r}")
    if not parsed.host:
        raise WebhookRefused("webhook URL has no host")
    if parsed.userinfo:
        raise WebhookRefused("webhook URL must not carry credentials")
    return parsed


def _check_literal(host: str) -> None:
    """Refuse ``host`` now if it is an address literal the policy refuses."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return
    why = refusal(ip)
    if why is not None and not allowed(host, ip, get_exposure_settings().allow):
        raise WebhookRefused(str(OutboundRefused(host, why)))


_client_lock = threading.Lock()
_client: httpx.Client | None = None


def http_client() -> httpx.Client:
    """One pooled client per process (greenlets of the gevent pool share it)."""
    global _client
    with _client_lock:
        if _client is None:
            _client = outbound_client(
                follow_redirects=False,
                limits=httpx.Limits(max_connections=MAX_CONNECTIONS),
                headers={"User-Agent": USER_AGENT},
            )
        return _client


def deliver(
    result: Any,
    url: str,
    *,
    idempotency_key: str | None = None,
    settings: NotifySettings | None = None,
    client: httpx.Client | None = None,
) -> dict[str, Any]:
    """POST ``result`` as JSON to ``url``; what the webhook answered (bounded).

    Raises:
        WebhookRefused: the URL is not http(s), its host's address is refused by the
            outbound policy (before anything connects), or the body is over the size limit.
        WebhookDeliveryError: connection or timeout failure, or a non-2xx answer (a redirect
            is not followed: it is a non-2xx answer).
    """
    settings = settings or notify_settings()
    target = parse_url(url)  # its addresses are vetted by the client's transport
    body = json.dumps(result, sort_keys=True, separators=(",", ":")).encode()
    if len(body) > settings.max_request_bytes:
        raise WebhookRefused(
            f"result is {len(body)} bytes, over {settings.max_request_bytes} "
            f"({ENV_PREFIX}MAX_REQUEST_BYTES)"
        )
    key = idempotency_key or (result.get("fingerprint") if isinstance(result, dict) else None)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Idempotency-Key"] = str(key)
    timeout = httpx.Timeout(settings.timeout, connect=settings.connect_timeout)
    received = 0  # counted, not kept: nothing of the answer goes into the result
    truncated = False
    try:
        with (client or http_client()).stream(
            "POST", target, content=body, headers=headers, timeout=timeout
        ) as response:
            for chunk in response.iter_bytes():
                room = settings.max_response_bytes - received
                if len(chunk) > room:
                    received += room
                    truncated = True
                    break
                received += len(chunk)
            status = response.status_code
    except OutboundRefused as exc:
        raise WebhookRefused(f"webhook {target.host}: {exc}") from None
    except httpx.HTTPError as exc:
        raise WebhookDeliveryError(f"webhook {target.host}: {type(exc).__name__}: {exc}") from None
    if not 200 <= status < 300:
        raise WebhookDeliveryError(f"webhook {target.host} answered {status}", status)
    return {
        "delivered": True,
        "status_code": status,
        "response_bytes": received,
        "truncated": truncated,
        "idempotency_key": key,
    }
