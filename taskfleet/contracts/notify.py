"""Deliver a finished contract result to a caller-supplied webhook (the I/O pool's work).

One POST of the result as JSON, with connect/read/write timeouts, a bounded request body
and a bounded read of the response. Failures raise; retrying is the retry middleware's job.
The receiver gets an ``Idempotency-Key`` header (the contract's fingerprint when it has one),
so a redelivered job that posts twice is recognisable as one delivery.

The URL comes from the caller, so it is checked before anything is sent: http or https only,
a host, no credentials in it. Redirects are not followed and the environment (proxies,
``.netrc`` credentials) is not consulted, so a webhook cannot pick up the worker's secrets.
"""

from __future__ import annotations

import json
import threading
from functools import lru_cache
from typing import Any

import httpx
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from taskfleet.config import ConfigError

ENV_PREFIX = "TASKFLEET_CONTRACT_NOTIFY_"
ALLOWED_SCHEMES = frozenset({"http", "https"})
DEFAULT_CONNECT_TIMEOUT_S = 3.0
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_REQUEST_BYTES = 256 * 1024
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024
RESPONSE_EXCERPT_CHARS = 256
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
    """The webhook URL or the body is not acceptable; retrying cannot help."""


class WebhookDeliveryError(RuntimeError):
    """The webhook could not be reached or answered with an error status."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


def check_url(url: str) -> httpx.URL:
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


_client_lock = threading.Lock()
_client: httpx.Client | None = None


def http_client() -> httpx.Client:
    """One pooled client per process (greenlets of the gevent pool share it)."""
    global _client
    with _client_lock:
        if _client is None:
            _client = httpx.Client(
                follow_redirects=False,
                trust_env=False,
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
        WebhookRefused: the URL is not http(s), or the body is over the size limit.
        WebhookDeliveryError: connection or timeout failure, or a non-2xx answer.
    """
    settings = settings or notify_settings()
    target = check_url(url)
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
    received = bytearray()
    truncated = False
    try:
        with (client or http_client()).stream(
            "POST", target, content=body, headers=headers, timeout=timeout
        ) as response:
            for chunk in response.iter_bytes():
                room = settings.max_response_bytes - len(received)
                if len(chunk) > room:
                    received += chunk[:room]
                    truncated = True
                    break
                received += chunk
            status = response.status_code
    except httpx.HTTPError as exc:
        raise WebhookDeliveryError(f"webhook {target.host}: {type(exc).__name__}: {exc}") from None
    if not 200 <= status < 300:
        raise WebhookDeliveryError(f"webhook {target.host} answered {status}", status)
    return {
        "delivered": True,
        "status_code": status,
        "response_bytes": len(received),
        "truncated": truncated,
        "response_excerpt": received.decode("utf-8", "replace")[:RESPONSE_EXCERPT_CHARS],
        "idempotency_key": key,
    }
