"""Results the persister could not store in Postgres: listed, counted, kept readable, re-queueable.

A record per key in the Redis hash ``taskfleet:quarantine`` (JSON: key, job id, category,
reason, stream entry id, size, expiry, time) and counts per category in
``taskfleet:quarantine:counts`` (``total``, ``oversize``, ``refused``, ``overflow``). The
result's own Redis key is made permanent (``PERSIST``; written back from the stream entry if
it had already gone), so the result stays readable through the normal read path until an
operator deals with it. A cache write keeps its whole stream entry in the record instead.
:meth:`Quarantine.requeue` appends records back to the persistence stream (after raising a
limit, or once Postgres is back for entries spilled by the stream cap) and restores the
result key's expiry.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from taskfleet.results.stream import CACHE_TABLE, TABLE_FIELD

QUARANTINE_KEY = "taskfleet:quarantine"
COUNTS_SUFFIX = ":counts"
KIND_RESULT = "result"
KIND_CACHE = CACHE_TABLE
RESULT_KEY_PREFIX = "celery-task-meta-"
#: Keys read per HSCAN round trip when listing.
SCAN_COUNT = 500

#: Record once per key: count it, and keep a result's key readable without expiry.
ADD_LUA = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], 'total', 1)
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
if ARGV[4] == 'result' then
  if redis.call('EXISTS', KEYS[3]) == 1 then
    redis.call('PERSIST', KEYS[3])
  elseif ARGV[5] ~= '' then
    redis.call('SET', KEYS[3], ARGV[5])
  end
end
return 1
"""


@dataclass(frozen=True)
class QuarantineRecord:
    """One quarantined stream entry."""

    key: str
    kind: str
    category: str
    reason: str
    entry_id: str
    size: int
    expires: float
    at: float = field(default_factory=time.time)
    task_id: str | None = None
    entry: dict[str, str] | None = None  # a cache write's stream fields (results: None)

    @property
    def name(self) -> str:
        """Its field in the quarantine hash: the result key, or ``cache:<key>``."""
        return self.key if self.kind == KIND_RESULT else f"{KIND_CACHE}:{self.key}"


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _seconds(raw: bytes | None) -> float:
    try:
        return float(raw or 0)
    except ValueError:
        return 0.0


def record_from_entry(
    entry_id: bytes, fields: dict[bytes, bytes], category: str, reason: str
) -> tuple[QuarantineRecord, str | None]:
    """The record of a persistence stream entry, and a result's meta text (cache: None).

    A cache write keeps its fields, with its original entry id as ``version`` so a requeued
    write never replaces a newer one.
    """
    raw_key = fields.get(b"key")
    key = _text(raw_key) if raw_key else f"entry:{_text(entry_id)}"
    raw_value = fields.get(b"value") or b""
    common: dict[str, Any] = {
        "key": key,
        "category": category,
        "reason": reason,
        "entry_id": _text(entry_id),
        "size": len(raw_value),
        "expires": _seconds(fields.get(b"expires")),
    }
    if fields.get(TABLE_FIELD.encode()) == KIND_CACHE.encode():
        entry = {_text(k): _text(v) for k, v in fields.items()}
        entry.setdefault("version", _text(entry_id))
        return QuarantineRecord(kind=KIND_CACHE, entry=entry, **common), None
    task_id = key.removeprefix(RESULT_KEY_PREFIX)
    record = QuarantineRecord(kind=KIND_RESULT, task_id=task_id, **common)
    return record, _text(raw_value)


class Quarantine:
    """The quarantine of one Redis (see module docstring)."""

    def __init__(self, client: redis.Redis, key: str = QUARANTINE_KEY) -> None:
        """Use ``key`` (and ``key + ':counts'``) on ``client``."""
        self.client = client
        self.key = key
        self.counts_key = key + COUNTS_SUFFIX
        self._add = client.register_script(ADD_LUA)

    def add(self, record: QuarantineRecord, value: str | None = None, pipe: Any = None) -> bool:
        """Record ``record`` unless its key is already quarantined; True if it is new.

        Args:
            record: what to record.
            value: a result's meta text, written back to its key only if Redis lost the key.
            pipe: a pipeline to queue the write on instead (the answer is then not known:
                returns False).
        """
        data = json.dumps(asdict(record), separators=(",", ":"))
        result_key = record.key if record.kind == KIND_RESULT else self.key
        args = [record.name, data, record.category, record.kind, value or ""]
        keys = [self.key, self.counts_key, result_key]
        if pipe is not None:
            self._add(keys=keys, args=args, client=pipe)
            return False
        return bool(self._add(keys=keys, args=args))

    def records(self, limit: int | None = None) -> list[QuarantineRecord]:
        """Quarantined entries, oldest first (at most ``limit`` scanned)."""
        found: list[QuarantineRecord] = []
        for _, raw in self.client.hscan_iter(self.key, count=SCAN_COUNT):
            found.append(QuarantineRecord(**json.loads(raw)))
            if limit is not None and len(found) >= limit:
                break
        return sorted(found, key=lambda r: r.at)

    def counts(self) -> dict[str, int]:
        """Entries quarantined so far, per category and ``total`` (requeued ones included)."""
        raw: dict[Any, Any] = self.client.hgetall(self.counts_key)
        return {_text(k): int(v) for k, v in raw.items()}

    def size(self) -> int:
        """Entries in quarantine now."""
        return int(self.client.hlen(self.key))

    def requeue(self, stream: str, keys: Iterable[str] | None = None) -> tuple[int, list[str]]:
        """Append quarantined entries to ``stream`` again and take them out of quarantine.

        Args:
            stream: the persistence stream.
            keys: which entries, by :attr:`QuarantineRecord.name` (default: all).

        Returns:
            How many were requeued, and the keys that could not be (not quarantined, or the
            result's Redis key is gone).
        """
        wanted = list(keys) if keys is not None else [r.name for r in self.records()]
        requeued, missing = 0, []
        for name in wanted:
            raw = self.client.hget(self.key, name)
            record = QuarantineRecord(**json.loads(raw)) if raw else None
            fields = record.entry if record is not None else None
            if record is not None and fields is None:
                value = self.client.get(record.key)
                if value is not None:
                    fields = {"key": record.key, "value": _text(value)}
                    fields["expires"] = str(int(record.expires))
            if record is None or fields is None:
                missing.append(name)
                continue
            pipe = self.client.pipeline(transaction=True)
            pipe.xadd(stream, dict(fields))  # type: ignore[arg-type]
            if record.kind == KIND_RESULT and record.expires > 0:
                pipe.expire(record.key, int(record.expires))
            pipe.hdel(self.key, name)
            pipe.execute()
            requeued += 1
        return requeued, missing
