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
