"""Result retention settings, the back-fill TTL, and the ``maxmemory-policy`` startup check."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis

from taskfleet.app import create_app
from taskfleet.config import load_settings
from taskfleet.config.redis_policy import (
    SAFE_POLICY,
    PolicyReport,
    read_policy,
    redacted,
    warn_if_evicting,
)
from taskfleet.config.settings import DEFAULT_RESULT_EXPIRES_S, DEFAULT_RESULT_RETENTION_S
from taskfleet.results.backend import BACKFILL_TTL_S

pytestmark = pytest.mark.usefixtures("clean_env")
#: Never contacted: building an app and its backend opens no connection.
URLS = {
    "broker_url": "redis://127.0.0.1:1/0",
    "redis_url": "redis://127.0.0.1:1/0",
    "database_url": "postgresql://postgres@127.0.0.1:1/unused",
    "embedded": False,
}


class FakeRedis:
    """Answers ``CONFIG GET`` with ``found``, or raises ``error``."""

    def __init__(self, found: dict[str, Any] | None = None, error: Exception | None = None):
        self.found = found or {}
        self.error = error

    def config_get(self, pattern: str) -> dict[str, Any]:
        assert pattern == "maxmemory*"
        if self.error is not None:
            raise self.error
        return self.found


def test_redis_keeps_an_hour_and_postgres_a_week_by_default() -> None:
    settings = load_settings()
    assert settings.result_expires == DEFAULT_RESULT_EXPIRES_S == 3600
    assert settings.result_retention == DEFAULT_RESULT_RETENTION_S == 7 * 24 * 3600


@pytest.mark.parametrize(
    ("expires", "retention", "kept"),
    [(3600, None, 7 * 24 * 3600), (3600, 86_400, 86_400), (30 * 86_400, None, 30 * 86_400)],
)
def test_postgres_keeps_the_retention_never_less_than_the_redis_ttl(
    expires: int, retention: int | None, kept: int
) -> None:
    extra = {} if retention is None else {"result_retention": retention}
    app = create_app(load_settings(**URLS, result_expires=expires, **extra))
    assert app.backend.retention == kept


def test_a_retention_below_the_redis_ttl_is_raised_to_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKFLEET_RESULT_EXPIRES", "7200")
    monkeypatch.setenv("TASKFLEET_RESULT_RETENTION", "3600")
    assert create_app(load_settings(**URLS)).backend.retention == 7200


@pytest.mark.parametrize(
    ("expires", "backfill"),
    [(3600, BACKFILL_TTL_S), (60, 60), (7 * 24 * 3600, BACKFILL_TTL_S)],
)
def test_backfill_is_short_and_within_the_redis_ttl(expires: int, backfill: int) -> None:
    app = create_app(load_settings(**URLS, result_expires=expires))
    assert app.backend.backfill_ttl == backfill


def test_noeviction_is_safe_and_logged_as_such() -> None:
    found = {"maxmemory-policy": SAFE_POLICY, "maxmemory": "6442450944"}
    report = read_policy(FakeRedis(found), "r:6379/0")  # type: ignore[arg-type]
    assert report == PolicyReport("r:6379/0", SAFE_POLICY, 6442450944)
    assert report.safe
    assert "6442450944 bytes" in report.message()


@pytest.mark.parametrize("policy", ["volatile-lru", "volatile-ttl", "allkeys-lru", "allkeys-lfu"])
def test_every_evicting_policy_is_named_in_a_warning(policy: str) -> None:
    report = read_policy(FakeRedis({"maxmemory-policy": policy, "maxmemory": "0"}), "r")  # type: ignore[arg-type]
    assert not report.safe
    assert repr(policy) in report.message()
    assert "maxmemory unset" in report.message()
    assert SAFE_POLICY in report.message()


def test_a_redis_without_config_is_reported_not_raised() -> None:
    error = redis.ResponseError("unknown command 'CONFIG'")
    report = read_policy(FakeRedis(error=error), "managed:6379/0")  # type: ignore[arg-type]
    assert not report.safe
    assert report.error is not None
    assert "unknown command" in report.message()
    assert "could not read" in report.message()


def test_warnings_never_raise_and_name_no_credentials(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from taskfleet.config import redis_policy

    answers = {
        "a:1/0": FakeRedis({"maxmemory-policy": "volatile-lru", "maxmemory": "0"}),
        "b:2/0": FakeRedis({"maxmemory-policy": SAFE_POLICY, "maxmemory": "0"}),
    }

    def fake_from_url(url: str, **_: Any) -> Any:
        client = answers[redacted(url)]
        client.close = lambda: None  # type: ignore[attr-defined]
        return client

    monkeypatch.setattr(redis_policy.redis.Redis, "from_url", fake_from_url)
    with caplog.at_level(logging.INFO, logger=redis_policy.log.name):
        reports = warn_if_evicting(
            ["redis://:secret@a:1/0", "redis://:secret@a:1/0", "redis://b:2/0"]
        )
    assert [r.safe for r in reports] == [False, True]  # the same Redis is asked once
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "a:1/0" in warnings[0].getMessage()
    assert "secret" not in caplog.text
