"""Queue depth and oldest-job age per queue and priority, read from the Redis broker.

kombu's Redis transport pushes a message on the left of its priority's list and takes from
the right, so the list's last element is the oldest waiting job of that priority. A message
has no publish time unless its producer stamped one (``taskfleet_sent_at``), so the age of
an unstamped tail is *observed*: the first scrape that sees a delivery tag at a list's tail
records Redis's time for it in :data:`TAILS_KEY`, shared by every scraper, and its age is
the time since. That age is a lower bound, short by at most one scrape interval.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

import redis

from taskfleet.routing.depth import redis_priority_key
from taskfleet.routing.transport import ALL_PRIORITY_STEPS
from taskfleet.routing.wire import SENT_AT_HEADER

#: Hash: priority list key -> "<delivery tag> <first seen, Redis seconds>".
TAILS_KEY: Final = "taskfleet:obs:tails"
MICROS_PER_S: Final = 1_000_000


@dataclass(frozen=True)
class QueueLevel:
    """One priority sub-list of a queue at one moment."""

    queue: str
    priority: int
    depth: int
    oldest_age_s: float


def _tail_identity(raw: bytes | None) -> tuple[str, float | None]:
    """The delivery tag of an envelope and its publish stamp, if any."""
    if raw is None:
        return "", None
    try:
        envelope: dict[str, Any] = json.loads(raw)
    except ValueError:
        return "", None
    props = envelope.get("properties") or {}
    sent_at = (envelope.get("headers") or {}).get(SENT_AT_HEADER)
    stamp = float(sent_at) if isinstance(sent_at, int | float) else None
    return str(props.get("delivery_tag", "")), stamp


def read_levels(client: redis.Redis, queues: list[str]) -> list[QueueLevel]:
    """Depth and oldest age of every priority sub-list of ``queues`` (two round trips)."""
    keys = [(q, p, redis_priority_key(q, p)) for q in queues for p in ALL_PRIORITY_STEPS]
    pipe = client.pipeline(transaction=False)
    pipe.time()
    pipe.hgetall(TAILS_KEY)
    for _, _, key in keys:
        pipe.llen(key)
        pipe.lindex(key, -1)
    replies = pipe.execute()
    seconds, micros = replies[0]
    now = float(seconds) + float(micros) / MICROS_PER_S
    known: dict[bytes, bytes] = replies[1]
    levels: list[QueueLevel] = []
    updates: dict[str | bytes | bytearray | memoryview | int | float, str] = {}
    gone: list[str] = []
    for index, (queue, priority, key) in enumerate(keys):
        depth, tail = int(replies[2 + 2 * index]), replies[3 + 2 * index]
        tag, stamp = _tail_identity(tail)
        age = 0.0
        if depth and stamp is not None:
            age = max(0.0, now - stamp)
        elif depth and tag:
            seen_tag, _, seen_at = known.get(key.encode(), b"").decode().partition(" ")
            if seen_tag == tag:
                age = max(0.0, now - float(seen_at))
            else:
                updates[key] = f"{tag} {now}"
        elif key.encode() in known:
            gone.append(key)
        levels.append(QueueLevel(queue, priority, depth, age))
    if updates or gone:
        pipe = client.pipeline(transaction=False)
        if updates:
            pipe.hset(TAILS_KEY, mapping=updates)
        if gone:
            pipe.hdel(TAILS_KEY, *gone)
        pipe.execute()
    return levels


def dead_letter_depths(client: redis.Redis, dlqs: list[str]) -> dict[str, int]:
    """Dead letters waiting per dead-letter queue (a plain list on the Redis broker)."""
    pipe = client.pipeline(transaction=False)
    for name in dlqs:
        pipe.llen(name)
    return {name: int(size) for name, size in zip(dlqs, pipe.execute(), strict=True)}
