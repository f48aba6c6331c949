"""A kombu connection on taskfleet's Redis transport with its own queue and unacked keys."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import redis
from kombu import Connection, Exchange, Queue

from taskfleet.routing.transport import TRANSPORT_PATH


@contextlib.contextmanager
def private_transport(
    redis_url: str, client: redis.Redis, prefix: str, atomic_fetch: bool = True
) -> Iterator[dict[str, Any]]:
    """Yield the connection, a channel, a declared queue and readers of the unacked keys.

    ``atomic_fetch`` is the transport option (false: kombu's BRPOP, then a separate record).
    Everything it created in Redis is deleted afterwards.
    """
    suffix = uuid.uuid4().hex[:8]
    keys = {"unacked_key": f"test-unacked-{suffix}", "unacked_index_key": f"test-uidx-{suffix}"}
    options = {**keys, "atomic_fetch": atomic_fetch}
    conn = Connection(redis_url, transport=TRANSPORT_PATH, transport_options=options)
    name = f"{prefix}-{suffix}"
    queue = Queue(name, Exchange(name, "direct"), name)
    channel = conn.channel()
    queue(channel).declare()
    producer = conn.Producer(channel)
    try:
        yield {
            "conn": conn,
            "channel": channel,
            "queue": queue,
            "publish": lambda n: [
                producer.publish({"n": i}, exchange=queue.exchange, routing_key=queue.routing_key)
                for i in range(n)
            ],
            "unacked": lambda: client.hlen(keys["unacked_key"]),
            "indexed": lambda: client.zcard(keys["unacked_index_key"]),
            "depth": lambda: client.llen(queue.name),
        }
    finally:
        conn.release()
        client.delete(*keys.values(), queue.name)


#: One "loop iteration" of a test consumer that finds nothing to deliver.
IDLE_POLL_S = 0.05


def consume(
    wired: dict[str, Any], conn: Any = None, channel: Any = None, no_ack: bool = False
) -> tuple[list[Any], Callable[[], bool]]:
    """Start consuming ``wired``'s queue (on ``conn``/``channel``, default its own); the
    messages it receives, and ``poll``: one loop iteration (always true, for ``wait_for``).
    """
    conn = conn or wired["conn"]
    received: list[Any] = []
    conn.Consumer(
        wired["queue"],
        channel=channel or wired["channel"],
        callbacks=[lambda _b, m: received.append(m)],
        no_ack=no_ack,
    ).consume()

    def poll() -> bool:
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=IDLE_POLL_S)
        return True

    return received, poll
