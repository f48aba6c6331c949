"""Where alert messages go: the log always, a webhook when one is configured.

The webhook gets one JSON ``POST`` per firing or resolve message, through
:func:`taskfleet.outbound.outbound_client`, which refuses non-public addresses unless
``TASKFLEET_OUTBOUND_ALLOW`` opens them. A failed delivery is logged and not retried: the
episode's state in Redis has already moved on, so a retry would need its own queue.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from taskfleet.outbound.policy import OutboundRefused
from taskfleet.outbound.transport import outbound_client

log = logging.getLogger(__name__)


def log_message(message: dict[str, Any]) -> None:
    """Log a firing message as a warning, a resolve message as info."""
    level = logging.WARNING if message["status"] == "firing" else logging.INFO
    log.log(
        level,
        "alert %s %s %s value=%s threshold=%s: %s",
        message["status"],
        message["alert"],
        message["labels"],
        message["value"],
        message["threshold"],
        message["summary"],
    )


class WebhookNotifier:
    """Logs each message and POSTs it to ``url`` (when set)."""

    def __init__(self, url: str | None, timeout_s: float) -> None:
        """Open the outbound client once (its allowlist read from the settings now)."""
        self.url = url
        self.client = outbound_client() if url else None
        self.timeout_s = timeout_s

    def __call__(self, message: dict[str, Any]) -> None:
        """Log ``message``; POST it to the webhook, logging (not raising) a failure."""
        log_message(message)
        if self.client is None or self.url is None:
            return
        try:
            reply = self.client.post(self.url, json=message, timeout=self.timeout_s)
            reply.raise_for_status()
        except (httpx.HTTPError, OutboundRefused) as exc:
            log.error("alert %s %s: webhook failed: %s", message["status"], message["alert"], exc)

    def close(self) -> None:
        """Close the outbound client."""
        if self.client is not None:
            self.client.close()
