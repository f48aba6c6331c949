"""RabbitMQ's dead-letter queues read as they are, without consuming them.

Messages reach ``<queue>.dlq`` through the work queue's dead-letter exchange for reasons
taskfleet never sees: a per-message or queue TTL expired, the queue's length limit, a
reject/nack from a client that is not taskfleet. Only the broker knows about those, so
``taskfleet dlq`` reads the queue itself: every message is fetched with ``basic.get`` (no
auto-ack), all are held unacked until the scan ends, then each is rejected with requeue.
RabbitMQ puts a requeued message of a classic queue back at its original position, so a
scan neither loses nor reorders messages. While one scan holds them, a concurrent scan sees
fewer; a message that dies during a scan shows on the next one.

The ``x-death`` header (newest first: reason, queue, time, count, exchange, routing keys)
says why and where a message died. A message's id is its Celery ``id`` header, else its
``message_id`` or ``correlation_id`` property, else a digest of its body and headers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from amqp import Message
from kombu import Connection

from taskfleet.resilience.deadletter import DeadLetter, Reason, raw_message

#: The most messages one scan holds (a DLQ longer than this is listed in part).
MAX_SCAN = 100_000
#: Headers the broker adds when it dead-letters a message (dropped when one is replayed).
DEATH_HEADERS = (
    "x-death",
    "x-first-death-reason",
    "x-first-death-queue",
    "x-first-death-exchange",
    "x-last-death-reason",
    "x-last-death-queue",
    "x-last-death-exchange",
)
#: ``x-death`` reasons as dead-letter reasons (anything else reads as ``rejected``).
BROKER_REASONS: dict[str, Reason] = {
    "expired": "expired",
    "rejected": "rejected",
    "maxlen": "maxlen",
    "delivery_limit": "delivery_limit",
}
DIGEST_CHARS = 32


def headers_of(message: Message) -> dict[str, Any]:
    """A fetched message's application headers."""
    return dict(message.properties.get("application_headers") or {})


def body_of(message: Message) -> bytes:
    """A fetched message's body as bytes (py-amqp decodes text bodies to ``str``)."""
    body = message.body
    if isinstance(body, str):
        return body.encode(message.properties.get("content_encoding") or "utf-8")
    return bytes(body or b"")


def letter_id(message: Message) -> str:
    """The id a broker message is listed, shown, replayed and purged by."""
    headers = headers_of(message)
    props = message.properties
    found = headers.get("id") or props.get("message_id") or props.get("correlation_id")
    if found:
        return str(found)
    stable = {k: v for k, v in headers.items() if k not in DEATH_HEADERS}
    digest = hashlib.sha256(body_of(message))
    digest.update(json.dumps(stable, sort_keys=True, default=str).encode())
    return f"broker-{digest.hexdigest()[:DIGEST_CHARS]}"


def _timestamp(value: Any) -> float | None:
    if isinstance(value, datetime):  # py-amqp decodes AMQP timestamps as naive UTC
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.timestamp()
    if isinstance(value, int | float):
        return float(value)
    return None


def last_death(headers: dict[str, Any]) -> dict[str, Any]:
    """The newest ``x-death`` entry (empty if the message has none)."""
    deaths = headers.get("x-death") or []
    return dict(deaths[0]) if deaths else {}


def to_dead_letter(message: Message, dlq: str) -> DeadLetter:
    """A dead-letter record describing a message the broker holds in ``dlq``."""
    headers = headers_of(message)
    death = last_death(headers)
    broker_reason = str(death.get("reason") or headers.get("x-first-death-reason") or "")
    queue = str(death.get("queue") or headers.get("x-first-death-queue") or "")
    count = int(death.get("count") or 1)
    dead_at = _timestamp(death.get("time"))
    properties = {k: v for k, v in message.properties.items() if k != "application_headers"}
    return DeadLetter(
        id=letter_id(message),
        kind=str(headers.get("task") or ""),
        queue=queue or dlq,
        reason=BROKER_REASONS.get(broker_reason, "rejected"),
        exc_message=f"dead-lettered by the broker: {broker_reason or 'unknown'} in {queue}",
        attempts=count,
        replay_of=headers.get("taskfleet_replay_of"),
        origin="broker",
        message=raw_message(
            body_of(message),
            message.properties.get("content_type"),
            message.properties.get("content_encoding"),
            headers,
            properties,
        ),
        dead_at=time.time() if dead_at is None else dead_at,
    )


@contextlib.contextmanager
def held_messages(conn: Connection, dlq: str) -> Iterator[tuple[Any, list[Message], set[int]]]:
    """Every message of ``dlq`` (up to :data:`MAX_SCAN`), held unacked on a raw channel,
    and the set the caller adds the delivery tags it acked to.

    On exit, each message not acked is rejected with requeue: back in its place.
    """
    channel = conn.connection.channel()
    held: list[Message] = []
    acked: set[int] = set()
    try:
        try:
            _, ready, _ = channel.queue_declare(dlq, passive=True)
        except conn.channel_errors:  # no such queue: nothing dead-lettered yet
            yield channel, held, acked
            return
        while len(held) < min(int(ready), MAX_SCAN):
            message = channel.basic_get(dlq, no_ack=False)
            if message is None:
                break
            held.append(message)
        yield channel, held, acked
    finally:
        with contextlib.suppress(*conn.connection_errors, *conn.channel_errors):
            for message in held:
                if message.delivery_tag not in acked:
                    channel.basic_reject(message.delivery_tag, requeue=True)
            channel.close()


def scan(broker_url: str, dlqs: Iterable[str]) -> list[tuple[str, DeadLetter]]:
    """Every message in the given dead-letter queues, as (dlq, record); none is consumed."""
    found: list[tuple[str, DeadLetter]] = []
    with Connection(broker_url) as conn:
        for dlq in dlqs:
            with held_messages(conn, dlq) as (_, messages, _):
                found.extend((dlq, to_dead_letter(m, dlq)) for m in messages)
    return found


def remove(broker_url: str, dlq: str, ids: set[str]) -> set[str]:
    """Ack (delete) every message of ``dlq`` whose id is in ``ids``; the ids found.

    The others are requeued in place.
    """
    removed: set[str] = set()
    with Connection(broker_url) as conn, held_messages(conn, dlq) as (channel, messages, acked):
        for message in messages:
            found = letter_id(message)
            if found in ids:
                channel.basic_ack(message.delivery_tag)
                acked.add(message.delivery_tag)
                removed.add(found)
    return removed
