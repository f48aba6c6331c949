"""Redis pool caps of a green worker (``taskfleet.workers.capacity``)."""

from __future__ import annotations

import pytest

from taskfleet.app import create_app
from taskfleet.config import load_settings
from taskfleet.workers import capacity


@pytest.fixture(autouse=True)
def fresh_ceiling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capacity, "_green_ceiling", 0)
    monkeypatch.delenv("TASKFLEET_AUTOSCALE_IO_WORKER_MAX", raising=False)


def test_a_green_worker_raises_every_cap_to_its_ceiling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKFLEET_AUTOSCALE_IO_WORKER_MAX", "120")
    app = create_app(load_settings(broker_url="redis://127.0.0.1:6379/0"))
    assert capacity.redis_pool_cap(20) == 20  # before: the configured size

    cap = capacity.size_for_green_worker(app, concurrency=50)

    assert cap == 120 + capacity.GREEN_HEADROOM  # the pool may grow to the autoscaler's max
    assert app.conf.broker_transport_options["max_connections"] == cap
    assert app.conf.broker_transport_options["visibility_timeout"] > 0  # others kept
    assert capacity.redis_pool_cap(20) == cap
    assert capacity.redis_pool_cap(10_000) == 10_000  # a larger configured size wins


def test_a_worker_larger_than_the_autoscale_max_gets_its_own_size() -> None:
    app = create_app(load_settings(broker_url="redis://127.0.0.1:6379/0"))
    assert capacity.size_for_green_worker(app, concurrency=500) == 500 + capacity.GREEN_HEADROOM


def test_a_rabbitmq_broker_keeps_its_transport_options() -> None:
    app = create_app(load_settings(broker_url="amqp://guest:guest@127.0.0.1:5672//"))
    cap = capacity.size_for_green_worker(app, concurrency=50)
    assert "max_connections" not in app.conf.broker_transport_options
    assert capacity.redis_pool_cap(20) == cap  # taskfleet's own Redis pools still grow
