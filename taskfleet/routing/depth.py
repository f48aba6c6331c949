"""Queue depth as the broker sees it: every Redis priority sub-list, or RabbitMQ's count."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import redis
from kombu import Connection

from taskfleet.routing.priority import ALL_PRIORITY_STEPS

#: kombu's separator between a queue name and its priority step on Redis.
REDIS_PRIORITY_SEP = "\x06\x16"


def redis_priority_key(queue: str, priority: int) -> str:
    """The Redis list kombu keeps messages of ``queue`` with ``priority`` in."""
    return queue if priority == 0 else f"{queue}{REDIS_PRIORITY_SEP}{priority}"


def redis_priority_keys(queue: str) -> list[str]:
    """Every Redis list that holds messages of ``queue`` (one per priority step)."""
    return [redis_priority_key(queue, step) for step in ALL_PRIORITY_STEPS]


def redis_queue_depths(client: redis.Redis, queues: Iterable[str]) -> dict[str, int]:
    """Messages waiting per queue on Redis, summed over all priority sub-lists, in one round trip."""
    names = list(queues)
    pipe = client.pipeline(transaction=False)
    for name in names:
        for key in redis_priority_keys(name):
            pipe.llen(key)
    sizes = pipe.execute()
    width = len(ALL_PRIORITY_STEPS)
    return {name: int(sum(sizes[i * width : (i + 1) * width])) for i, name in enumerate(names)}


def amqp_queue_depths(connection: Connection, queues: Iterable[str]) -> dict[str, int]:
    """Messages ready per queue on RabbitMQ, read with passive declares (0 if it does not exist)."""
    depths: dict[str, int] = {}
    for name in queues:
        channel = connection.channel()
        try:
            _, count, _ = channel.queue_declare(queue=name, passive=True)
            depths[name] = int(count)
        except connection.channel_errors:
            depths[name] = 0  # a passive declare of a missing queue closes the channel
        finally:
            with contextlib.suppress(Exception):  # the broker may have closed it already
                channel.close()
    return depths


def queue_depths(connection: Connection, queues: Iterable[str]) -> dict[str, int]:
    """Depth per queue on whichever broker ``connection`` points at."""
    if connection.transport.driver_type == "redis":
        client = connection.default_channel.client
        return redis_queue_depths(client, queues)
    return amqp_queue_depths(connection, queues)
