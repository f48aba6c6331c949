"""Unit-test fixtures."""

from __future__ import annotations

import os

import pytest

from taskfleet.config.settings import ENV_PREFIX


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``TASKFLEET_*`` variable and no ``.env`` file: settings come from defaults only."""
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    monkeypatch.chdir("/")


@pytest.fixture(scope="session", autouse=True)
def _service_urls(session_services: dict[str, str]) -> dict[str, str]:
    """Unit tests run in a pytest session of their own (``make test`` runs them beside the
    stock-transport pass). The few that build an app with some URLs unset resolve the rest to
    the session's services, as in one whole-suite session, never to an embedded stack started
    in the working directory."""
    return session_services
