"""L2: Redis. Every write is one Lua call: SET with TTL, PUBLISH the invalidation, and XADD
the write to the persistence stream that feeds L3 (the write-behind buffer), atomically.

Because the stream append happens in the same script as the SET, the stream's order is the
order Redis applied the writes, and its entry id becomes the row version in Postgres: the
last write to reach Redis is the one every tier ends up holding.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cached_property
from typing import Any

import redis

from taskfleet.cache.stats import TierStats
from taskfleet.cache.tiers import glob_escape
from taskfleet.config.cache import DEFAULT_L2_TTL_S, DEFAULT_NAMESPACE
from taskfleet.results.stream import CACHE_TABLE, TABLE_FIELD

NO_WRITE_BEHIND = "-1"
SCAN_BATCH = 1000

#: KEYS: stream, then the Redis keys. ARGV: ttl, channel, origin, l3 ttl (-1: no L3), n,
#: then n logical keys, then n values (empty ARGV list of values for deletes).
WRITE_LUA = """
local ttl, channel, origin, l3ttl = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local n = tonumber(ARGV[5])
local op = ARGV[6]
local logical = {}
for i = 1, n do
  local key = ARGV[6 + i]
  if op == 'set' then
    local value = ARGV[6 + n + i]
    redis.call('SET', KEYS[i + 1], value, 'EX', ttl)
    if l3ttl ~= '-1' then
      redis.call('XADD', KEYS[1], '*', 'table', 'cache', 'op', 'set', 'key', key,
                 'value', value, 'expires', l3ttl)
    end
  else
    redis.call('DEL', KEYS[i + 1])
    if l3ttl ~= '-1' then
      redis.call('XADD', KEYS[1], '*', 'table', 'cache', 'op', 'del', 'key', key,
                 'expires', l3ttl)
    end
  end
  logical[i] = key
end
redis.call('PUBLISH', channel, cjson.encode({o = origin, k = logical}))
return n
"""


class RedisTier:
    """Keys live under ``<namespace>:``; writes also publish invalidations and feed L3."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        ttl: int = DEFAULT_L2_TTL_S,
        stream: str | None = None,
        l3_ttl: int | None = None,
        origin: str = "",
        name: str = "l2",
    ) -> None:
        """``stream`` set: writes are appended there for the L3 write-behind."""
        self.client = client
        self.namespace = namespace
        self.prefix = f"{namespace}:v:"
        self.channel = f"{namespace}:invalidate"
        self.ttl = ttl
        self.stream = stream
        self.l3_ttl = l3_ttl
        self.origin = origin
        self.name = name
        self.stats = TierStats(name)

    @cached_property
    def _script(self) -> Any:
        return self.client.register_script(WRITE_LUA)

    def rkey(self, key: str) -> str:
        """The Redis key holding ``key``."""
        return self.prefix + key

    def get_many(self, keys: list[str]) -> dict[str, str]:
        """The text of each present key (one MGET)."""
        values = self.client.mget([self.rkey(k) for k in keys])
        return {
            k: v.decode() if isinstance(v, bytes) else v
            for k, v in zip(keys, values, strict=True)
            if v is not None
        }

    def _write(self, op: str, keys: list[str], values: list[str]) -> None:
        write_behind = self.stream is not None and self.l3_ttl is not None
        self._script(
            keys=[self.stream or "", *map(self.rkey, keys)],
            args=[
                self.ttl,
                self.channel,
                self.origin,
                str(self.l3_ttl) if write_behind else NO_WRITE_BEHIND,
                len(keys),
                op,
                *keys,
                *values,
            ],
        )

    def set_many(self, items: Mapping[str, str]) -> None:
        """Write through (and into the write-behind stream) in one atomic call."""
        if items:
            self._write("set", list(items), list(items.values()))

    def fill_many(self, items: Mapping[str, str]) -> None:
        """Back-fill from L3: only where Redis has nothing (never over a newer write)."""
        pipe = self.client.pipeline(transaction=False)
        for key, value in items.items():
            pipe.set(self.rkey(key), value, ex=self.ttl, nx=True)
        pipe.execute()

    def delete(self, keys: list[str]) -> int:
        """Delete literally, tombstone in L3, tell every L1."""
        if keys:
            self._write("del", keys, [])
        return len(keys)

    def delete_pattern(self, pattern: str) -> int:
        """Delete every key matching a glob; L3 and every L1 are told the pattern."""
        deleted = 0
        batch: list[bytes] = []
        for rkey in self.client.scan_iter(
            match=glob_escape(self.prefix) + pattern, count=SCAN_BATCH
        ):
            batch.append(rkey)
            if len(batch) >= SCAN_BATCH:
                deleted += int(self.client.unlink(*batch))
                batch.clear()
        if batch:
            deleted += int(self.client.unlink(*batch))
        pipe = self.client.pipeline(transaction=True)
        if self.stream is not None and self.l3_ttl is not None:
            fields = {TABLE_FIELD: CACHE_TABLE, "op": "delpat", "key": pattern, "expires": "0"}
            pipe.xadd(self.stream, fields)  # type: ignore[arg-type]
        pipe.publish(self.channel, json.dumps({"o": self.origin, "p": pattern}))
        pipe.execute()
        return deleted

    def clear(self) -> None:
        """Delete every key of this namespace (no L3 tombstones: tests and benchmarks)."""
        for rkey in self.client.scan_iter(match=glob_escape(self.prefix) + "*", count=SCAN_BATCH):
            self.client.unlink(rkey)
        self.client.publish(self.channel, json.dumps({"o": self.origin, "all": True}))
