"""Moving jobs out of a worker group that has no consumer, on RabbitMQ.

On Redis the heartbeat sidecars sweep (:mod:`taskfleet.group_sweep`). On RabbitMQ the beat
runs ``routing.group_sweep`` (:mod:`taskfleet.routing.sweep_tasks`) every
``TASKFLEET_RESILIENCE_RECLAIM_INTERVAL`` with the same rule: per pool, a group queue that has
had no consumer (RabbitMQ's own count, :mod:`taskfleet.routing.amqp_groups`) for one
heartbeat TTL more than the TTL, while another group of the pool has one, has its messages
moved to the consumed group with the least backlog. When each group queue was first seen
without a consumer is kept in Redis (``NO_CONSUMER_SINCE``), so any worker's tick may sweep.

A move is ``basic.get`` from the dead queue, ``basic.publish`` of the same body and
properties (priority and headers kept) to the other queue with a publisher confirm, then
``basic.ack`` of the original. A crash between the confirm and the ack leaves the message in
both queues: at least once, as every redelivery (results are keyed by job id). Each tick
moves at most ``MOVE_BATCH`` messages per queue; the next one moves the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import redis

from taskfleet.group_sweep import SWEEP_GRACE_TTLS
from taskfleet.routing.group_reading import GroupReader

#: Redis hash: group queue -> when it was first seen without a consumer (epoch seconds).
NO_CONSUMER_SINCE = "taskfleet:groups:no-consumer-since"
MOVE_BATCH = 1000


def move_messages(connection: Any, source: str, target: str, limit: int = MOVE_BATCH) -> int:
    """Move up to ``limit`` messages from queue ``source`` to ``target``; how many moved.

    ``connection`` is a kombu ``Connection`` on py-amqp with ``confirm_publish`` set, so
    each publish returns only once RabbitMQ has the copy.
    """
    from amqp import Message

    channel = connection.channel()
    moved = 0
    try:
        while moved < limit:
            message = channel.basic_get(source, no_ack=False)
            if message is None:
                break
            copy = Message(message.body, **message.properties)
            channel.basic_publish(copy, exchange="", routing_key=target)
            channel.basic_ack(message.delivery_tag)
            moved += 1
    finally:
        channel.close()
    return moved


def sweep_amqp(
    reader: GroupReader,
    connection: Any,
    client: redis.Redis,
    pools: Mapping[str, Sequence[str]],
    *,
    now: float,
    ttl: float,
) -> int:
    """One pass over every pool's group queues; returns how many messages moved.

    Args:
        reader: Reads each group queue's backlog and consumers from RabbitMQ.
        connection: Where messages are moved (see :func:`move_messages`).
        client: The Redis that keeps when each queue was first seen without a consumer.
        pools: Per pool queue, its group queues.
        now: The time (epoch seconds).
        ttl: The heartbeat TTL; a queue is swept after ``ttl * (1 + SWEEP_GRACE_TTLS)``.
    """
    readings = reader([name for names in pools.values() for name in names])
    grace = ttl * (1 + SWEEP_GRACE_TTLS)
    moved = 0
    for names in pools.values():
        live = [n for n in names if readings[n].consumers]
        dead = [n for n in names if not readings[n].consumers]
        pipe = client.pipeline(transaction=False)
        if live:
            pipe.hdel(NO_CONSUMER_SINCE, *live)
        for name in dead:
            pipe.hsetnx(NO_CONSUMER_SINCE, name, repr(now))
        if dead:
            pipe.hmget(NO_CONSUMER_SINCE, dead)
        replies = pipe.execute()
        if not (live and dead):
            continue
        target = min(live, key=lambda n: readings[n].backlog)
        for name, since in zip(dead, replies[-1], strict=True):
            if readings[name].backlog and since is not None and now - float(since) >= grace:
                moved += move_messages(connection, name, target)
    return moved
