"""Dead-letter records: what a job was, why it died, and where the record is kept.

A record is JSON: the original message (body base64, content type, headers, properties) and
the metadata (reason, exception type and message, traceback, attempts, timestamps).

* Redis broker: the record is pushed onto the pool's dead-letter *list* (``cpu.dlq``), so
  ``queue_depths`` counts dead letters like any queue. An index hash (job id -> 1) makes the
  push idempotent: a job dead-lettered twice (redelivered after a crash) is stored once.
* RabbitMQ: the message itself reaches ``<queue>.dlq`` through the broker's dead-letter
  exchange (the worker rejects it without requeue); the same metadata is stored in a Redis
  hash keyed by job id and joined back when listing; each record there is dropped
  ``TASKFLEET_RESILIENCE_BOOKKEEPING_TTL`` after it was stored (a sorted set beside the hash
  holds when; each write prunes up to ``META_PRUNE_BATCH`` expired ones), so a steady trickle
  of dead letters cannot grow it for ever. The message stays in the broker's queue and is
  still listed, as the broker describes it. Messages the broker dead-letters on its
  own (TTL, length limit, another client's reject) have no metadata: they are read from the
  queue itself (``resilience/broker_dlq.py``) and listed with ``origin="broker"``.
"""

from __future__ import annotations

import base64
import json
import time
import traceback as tb
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import redis

Reason = Literal[
    "retries_exhausted",
    "non_retryable",
    "invalid_arguments",
    "poison_pill",
    "unknown_task",
    "malformed",
    "content_disallowed",
    "oversize",
    # Dead-lettered by RabbitMQ itself (``x-death`` reason), not by a taskfleet worker:
    "expired",
    "rejected",
    "maxlen",
    "delivery_limit",
]
#: Who dead-lettered a job: a taskfleet worker (with metadata), or the broker on its own.
Origin = Literal["taskfleet", "broker"]
INDEX_PREFIX = "taskfleet:dlq:index:"
META_PREFIX = "taskfleet:dlq:meta:"
#: The sorted set (job id -> when stored) beside a metadata hash: ``META_PREFIX + dlq + this``.
META_AGES_SUFFIX = ":at"
#: Expired metadata records dropped per write at most (more than one write adds).
META_PRUNE_BATCH = 100
MAX_TRACEBACK_CHARS = 8000

# Push once per job id: HSETNX the index, then LPUSH the record (atomic in one script).
_PUSH_ONCE = """
if redis.call('HSETNX', KEYS[2], ARGV[1], '1') == 1 then
  redis.call('LPUSH', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS: metadata hash, its ages (sorted set). ARGV: job id, record, now, ttl, prune batch.
# Drops records stored more than ttl ago (a bounded batch), stores this one, and keeps both
# keys expiring ttl after the newest write. Returns how many were dropped.
_STORE_META = """
local cutoff = tonumber(ARGV[3]) - tonumber(ARGV[4])
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cutoff, 'LIMIT', 0, tonumber(ARGV[5]))
if #stale > 0 then
  redis.call('HDEL', KEYS[1], unpack(stale))
  redis.call('ZREM', KEYS[2], unpack(stale))
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return #stale
"""


@dataclass
class DeadLetter:
    """One dead job."""

    id: str
    kind: str
    queue: str
    reason: Reason
    exc_type: str = ""
    exc_message: str = ""
    traceback: str = ""
    attempts: int = 1
    dead_at: float = field(default_factory=time.time)
    first_attempt_at: float | None = None
    replay_of: str | None = None
    message: dict[str, Any] = field(default_factory=dict)
    origin: Origin = "taskfleet"

    @classmethod
    def from_exception(
        cls,
        *,
        job_id: str,
        kind: str,
        queue: str,
        reason: Reason,
        exc: BaseException | None,
        **extra: Any,
    ) -> DeadLetter:
        """A record describing ``exc`` (with its traceback)."""
        text = ""
        if exc is not None:
            text = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
        return cls(
            id=job_id,
            kind=kind,
            queue=queue,
            reason=reason,
            exc_type=type(exc).__name__ if exc is not None else "",
            exc_message=str(exc) if exc is not None else "",
            traceback=text[-MAX_TRACEBACK_CHARS:],
            **extra,
        )

    def to_json(self) -> str:
        """The record as stored."""
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True, default=str)

    @classmethod
    def from_json(cls, raw: str | bytes) -> DeadLetter:
        """Parse a stored record."""
        return cls(**json.loads(raw))

    @property
    def age(self) -> float:
        """Seconds since it died."""
        return time.time() - self.dead_at


def raw_message(
    body: bytes | str | None,
    content_type: str | None,
    content_encoding: str | None,
    headers: dict[str, Any] | None,
    properties: dict[str, Any] | None,
) -> dict[str, Any]:
    """A broker message as JSON-safe data (the body base64-encoded, whatever it holds)."""
    data = body.encode() if isinstance(body, str) else (body or b"")
    return {
        "body": base64.b64encode(data).decode(),
        "content-type": content_type,
        "content-encoding": content_encoding,
        "headers": json.loads(json.dumps(headers or {}, default=str)),
        "properties": json.loads(json.dumps(properties or {}, default=str)),
    }


def store_redis(client: redis.Redis, dlq: str, letter: DeadLetter) -> bool:
    """Push the record on the Redis DLQ list once per job id; False if already there."""
    pushed = client.eval(_PUSH_ONCE, 2, dlq, INDEX_PREFIX + dlq, letter.id, letter.to_json())
    return bool(pushed)


def store_amqp_metadata(
    client: redis.Redis, dlq: str, letter: DeadLetter, ttl: int, now: float | None = None
) -> int:
    """Keep the metadata of a job the broker dead-letters for ``ttl`` seconds (idempotent:
    same field, same value); returns how many expired records this write dropped."""
    key = META_PREFIX + dlq
    stamp = time.time() if now is None else now
    args: list[str | int] = [letter.id, letter.to_json(), repr(stamp), ttl, META_PRUNE_BATCH]
    return int(client.eval(_STORE_META, 2, key, key + META_AGES_SUFFIX, *args))
