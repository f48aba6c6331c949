"""Settings validation: bad combinations fail at start, naming the setting."""

from __future__ import annotations

import pytest

from taskfleet.config import ConfigError, load_settings

pytestmark = pytest.mark.usefixtures("clean_env")


def test_defaults_are_valid() -> None:
    settings = load_settings()
    assert settings.broker_is_redis
    assert settings.hard_time_limit < settings.visibility_timeout
    assert settings.dlq_name("cpu") == "cpu.dlq"


def test_hard_limit_at_or_above_visibility_timeout_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKFLEET_VISIBILITY_TIMEOUT", "600")
    monkeypatch.setenv("TASKFLEET_HARD_TIME_LIMIT", "600")
    with pytest.raises(
        ConfigError, match=r"TASKFLEET_HARD_TIME_LIMIT.*TASKFLEET_VISIBILITY_TIMEOUT"
    ):
        load_settings()


def test_visibility_timeout_does_not_bind_on_rabbitmq(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKFLEET_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    monkeypatch.setenv("TASKFLEET_VISIBILITY_TIMEOUT", "600")
    monkeypatch.setenv("TASKFLEET_SOFT_TIME_LIMIT", "900")
    monkeypatch.setenv("TASKFLEET_HARD_TIME_LIMIT", "1000")
    assert load_settings().broker_is_amqp


def test_soft_limit_must_be_below_hard_limit() -> None:
    with pytest.raises(ConfigError, match="TASKFLEET_SOFT_TIME_LIMIT"):
        load_settings(soft_time_limit=60, hard_time_limit=30)


def test_missing_urls_without_embedded_stack_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKFLEET_EMBEDDED", "false")
    with pytest.raises(ConfigError, match="TASKFLEET_BROKER_URL, TASKFLEET_DATABASE_URL"):
        load_settings()


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("broker_url", "kafka://localhost", "TASKFLEET_BROKER_URL"),
        ("redis_url", "amqp://localhost", "TASKFLEET_REDIS_URL"),
        ("database_url", "mysql://localhost/db", "TASKFLEET_DATABASE_URL"),
        ("cpu_concurrency", "0", "TASKFLEET_CPU_CONCURRENCY"),
        ("cpu_queue", "has space", "TASKFLEET_CPU_QUEUE"),
    ],
)
def test_invalid_values_name_their_variable(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str, named: str
) -> None:
    monkeypatch.setenv(f"TASKFLEET_{field.upper()}", value)
    with pytest.raises(ConfigError, match=named):
        load_settings()


def test_same_queue_for_both_pools_is_refused() -> None:
    with pytest.raises(ConfigError, match="TASKFLEET_CPU_QUEUE and TASKFLEET_IO_QUEUE"):
        load_settings(cpu_queue="jobs", io_queue="jobs")


#: Every URL set: building the Celery config starts no embedded stack.
NO_EMBEDDED_STACK = {
    "embedded": False,
    "broker_url": "redis://127.0.0.1:6379/0",
    "redis_url": "redis://127.0.0.1:6379/0",
    "database_url": "postgresql://taskfleet@127.0.0.1:5432/test",
}


@pytest.mark.parametrize(
    ("value", "transport"),
    [
        (None, "taskfleet.routing.transport:Transport"),
        ("true", "taskfleet.routing.transport:Transport"),
        ("false", "taskfleet.routing.stock_transport:Transport"),
    ],
)
def test_fast_transport_picks_the_redis_transport(
    monkeypatch: pytest.MonkeyPatch, value: str | None, transport: str
) -> None:
    from taskfleet.app_config import celery_config

    if value is not None:
        monkeypatch.setenv("TASKFLEET_FAST_TRANSPORT", value)
    config = celery_config(load_settings(**NO_EMBEDDED_STACK))
    assert config["broker_transport"] == transport
    options = config["broker_transport_options"]
    assert options["priority_steps"] == list(range(10))  # the same sub-lists either way
    assert ("atomic_fetch" in options) is (value != "false")  # stock kombu has no such option


def test_fast_transport_does_not_touch_rabbitmq(monkeypatch: pytest.MonkeyPatch) -> None:
    from taskfleet.app_config import celery_config

    monkeypatch.setenv("TASKFLEET_FAST_TRANSPORT", "false")
    amqp = {**NO_EMBEDDED_STACK, "broker_url": "amqp://guest:guest@127.0.0.1:5672//"}
    assert "broker_transport" not in celery_config(load_settings(**amqp))
