"""A starting worker's ``hello`` (Celery's Mingle) waits 0.2 s for replies, not a second."""

from __future__ import annotations

from typing import Any

import pytest

from taskfleet.app_config import create_app
from taskfleet.config import load_settings
from taskfleet.workers import mingle


def test_only_hello_waits_less_and_other_commands_keep_their_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = create_app(load_settings(broker_url="redis://127.0.0.1:1/0", redis_url="redis://x"))
    sent: list[tuple[str, float, dict[str, Any]]] = []

    def request(self: mingle.QuickHelloInspect, command: str, **kwargs: Any) -> dict[str, Any]:
        sent.append((command, self.timeout, kwargs))
        return {"other@h": {"revoked": []}, "me@h": {}}

    monkeypatch.setattr(mingle.QuickHelloInspect, "_request", request)
    # As Celery's Mingle asks: a second's wait.
    replies = app.control.inspect(timeout=1.0).hello("me@h", ["job-1"])
    assert replies == {"other@h": {"revoked": []}, "me@h": {}}
    app.control.inspect(timeout=1.0).ping()
    app.control.inspect(timeout=0.05).hello("me@h")  # a shorter wait asked is kept
    assert sent == [
        ("hello", mingle.HELLO_TIMEOUT_S, {"from_node": "me@h", "revoked": ["job-1"]}),
        ("ping", 1.0, {}),
        ("hello", 0.05, {"from_node": "me@h", "revoked": None}),
    ]


def test_the_app_uses_taskfleets_control() -> None:
    app = create_app(load_settings(broker_url="redis://127.0.0.1:1/0", redis_url="redis://x"))
    assert isinstance(app.control, mingle.Control)
