"""Flower's RabbitMQ queue depths over AMQP: the rows, the failures, and when Flower uses them."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from taskfleet.observability.flower_amqp import AmqpQueues, patch_flower, read_queues


class NotFound(Exception):
    """A passive declare's 404 (py-amqp raises a channel error and closes the channel)."""


class FakeConnection:
    """A kombu ``Connection`` over queues ``{name: (ready, consumers)}``."""

    channel_errors = (NotFound,)

    def __init__(
        self, queues: dict[str, tuple[int, int]], refuse: bool = False, hang: bool = False
    ) -> None:
        self.queues, self.refuse, self.hang = queues, refuse, hang
        self.channels = 0
        self.released = threading.Event()

    def __enter__(self) -> FakeConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.released.set()

    def ensure_connection(self, max_retries: int) -> None:
        assert max_retries == 0  # one attempt: the page must not wait on retries
        if self.refuse:
            raise OSError("connection refused")
        if self.hang:  # until the test lets go
            self.released.wait(10)
            raise OSError("connect timed out")

    def channel(self) -> Any:
        self.channels += 1

        def queue_declare(queue: str, passive: bool) -> tuple[str, int, int]:
            assert passive  # never creates a queue
            if queue not in self.queues:
                raise NotFound(404)
            return (queue, *self.queues[queue])

        return SimpleNamespace(queue_declare=queue_declare)


def test_rows_have_the_management_apis_shape_and_missing_queues_are_left_out() -> None:
    conn = FakeConnection({"cpu": (6, 0), "io": (4, 2)})
    rows = read_queues(conn, ["cpu", "cpu.dlq", "io"])
    assert rows == [
        {"name": "cpu", "messages": 6, "messages_ready": 6, "consumers": 0,
         "messages_unacknowledged": None},
        {"name": "io", "messages": 4, "messages_ready": 4, "consumers": 2,
         "messages_unacknowledged": None},
    ]  # fmt: skip
    assert conn.channels == 2  # a new channel after the 404 closed the first
    assert conn.released.is_set()


def test_an_unreachable_or_slow_broker_gives_no_rows_without_blocking_the_loop() -> None:
    refused = FakeConnection({"cpu": (1, 0)}, refuse=True)
    assert asyncio.run(AmqpQueues(lambda: refused).queues(["cpu"])) == []
    slow = FakeConnection({"cpu": (1, 0)}, hang=True)

    async def read_while_ticking() -> tuple[list[Any], int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        rows = await AmqpQueues(lambda: slow, timeout=0.2).queues(["cpu"])
        slow.released.set()  # ends the reading thread (asyncio.run waits for it)
        ticker.cancel()
        return rows, ticks

    rows, ticks = asyncio.run(read_while_ticking())
    assert rows == []
    assert ticks >= 5  # the loop ran on while the thread waited


def _handler(transport: str, broker_api: str | None, uri: str) -> Any:
    conf = SimpleNamespace(broker_transport_options={}, broker_use_ssl=None)
    capp = SimpleNamespace(conf=conf, connection_for_read=lambda **kw: FakeConnection({}))
    options = SimpleNamespace(broker_api=broker_api)
    app = SimpleNamespace(transport=transport, options=options, broker_uri_with_password=uri)
    return SimpleNamespace(application=app, capp=capp)


def test_flower_reads_amqp_only_without_broker_api(monkeypatch: pytest.MonkeyPatch) -> None:
    from flower.utils.broker import RabbitMQ, Redis
    from flower.views import BaseHandler

    monkeypatch.setattr(BaseHandler, "get_broker", BaseHandler.get_broker)  # restored after
    patch_flower()
    amqp = "amqp://guest:guest@127.0.0.1:5672//"
    assert isinstance(BaseHandler.get_broker(_handler("amqp", None, amqp)), AmqpQueues)
    stock = BaseHandler.get_broker(_handler("amqp", "http://127.0.0.1:15672/api/", amqp))
    assert isinstance(stock, RabbitMQ)
    assert stock.http_api == "http://127.0.0.1:15672/api/"
    redis_client = BaseHandler.get_broker(_handler("redis", None, "redis://127.0.0.1:6379/0"))
    assert isinstance(redis_client, Redis)
