"""Backend sets from ``TASKFLEET_BACKENDS`` and the balancing knobs' defaults and errors."""

from __future__ import annotations

import pytest

from taskfleet.balancing import Balancer, RoundRobin
from taskfleet.config import ConfigError
from taskfleet.config.balancing import (
    DEFAULT_CONSECUTIVE_FAILURES,
    DEFAULT_HEALTH_INTERVAL_S,
    load_balancing_settings,
)


@pytest.mark.usefixtures("clean_env")
def test_a_list_is_the_default_set_and_an_object_names_sets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_balancing_settings().backends == {}
    monkeypatch.setenv("TASKFLEET_BACKENDS", '[{"name": "a", "url": "http://h:1/", "weight": 3}]')
    (only,) = load_balancing_settings().backend_set()
    assert (only.url, only.weight, only.region) == ("http://h:1", 3, "")
    monkeypatch.setenv(
        "TASKFLEET_BACKENDS",
        '{"pricing": [{"name": "eu-1", "url": "https://p", "region": "eu"}], '
        '"hooks": [{"name": "h", "url": "http://w"}]}',
    )
    settings = load_balancing_settings()
    assert [b.name for b in settings.backend_set("pricing")] == ["eu-1"]
    assert settings.health_interval == DEFAULT_HEALTH_INTERVAL_S
    assert settings.consecutive_failures == DEFAULT_CONSECUTIVE_FAILURES
    with pytest.raises(KeyError, match="declared: hooks, pricing"):
        settings.backend_set("registry")
    balancer = Balancer.for_set("pricing", RoundRobin(), settings=settings)
    assert (balancer.set_name, list(balancer.by_name)) == ("pricing", ["eu-1"])
    assert balancer.board.mode == "local"  # no Redis client: this process's marks only


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not json", "TASKFLEET_BACKENDS is not valid JSON"),
        ('[{"name": "a", "url": "ftp://x"}]', r"TASKFLEET_BACKENDS\['default'\]\[0\]\['url'\]"),
        ('{"p": [{"name": "a", "url": "http://x", "weight": 0}]}', r"\['weight'\]"),
        ('{"p": [{"name": "a", "url": "http://x"}, {"name": "a", "url": "http://y"}]}', "distinct"),
        ('{"p": []}', "distinct names"),
    ],
)
def test_invalid_backends_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("TASKFLEET_BACKENDS", value)
    with pytest.raises(ConfigError, match=message):
        load_balancing_settings()


@pytest.mark.usefixtures("clean_env")
def test_an_invalid_knob_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKFLEET_BALANCING_HEALTH_INTERVAL", "0")
    with pytest.raises(ConfigError, match="TASKFLEET_BALANCING_HEALTH_INTERVAL"):
        load_balancing_settings()
