"""GCRA state on Redis: one Lua call per check (``gcra.lua``), shared by the whole fleet.

Written as a script rather than taken from ``limits``: ``limits`` has no GCRA, its hits
answer only yes or no (a refusal needs a second call for the reset time, ``retry_after``
here comes back with the verdict), it checks one limit per call (a job under a kind's and a
client's limit must be charged on both or neither), and it cannot book a future slot for a
deferred job. The script does all of that in one round trip. Each state key expires when its
bucket is full again (its state then says nothing), so idle clients cost nothing.
"""

from __future__ import annotations

from pathlib import Path

import redis

from taskfleet.ratelimit.errors import LimitStorageError
from taskfleet.ratelimit.store_base import SLOT_GRACE_S, TALLY_CAP, GcraCall, Verdict

LUA_PATH = Path(__file__).with_name("gcra.lua")
#: Key prefix of everything the rate limits keep in Redis.
KEY_PREFIX = "taskfleet:limits:"
#: Sorted set of counter hashes, by when each was last bumped (``limits status``).
INDEX_KEY = KEY_PREFIX + "index"
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, OSError)


class RedisGcraStore:
    """GCRA calls as one ``gcra.lua`` script call each. Thread-safe."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._script = client.register_script(LUA_PATH.read_text())

    def acquire(self, call: GcraCall, now: float) -> Verdict:
        """See :meth:`taskfleet.ratelimit.store_base.GcraStore.acquire`."""
        tally = call.tally
        keys = [*call.keys, call.slot_key, INDEX_KEY, *tally.keys]
        argv: list[str | int | float] = [
            repr(now),
            call.cost,
            repr(call.horizon),
            len(call.keys),
            SLOT_GRACE_S,
            tally.ttl_s,
            TALLY_CAP,
            tally.allowed,
            tally.reserved,
            tally.refused,
            repr(call.late_s),
        ]
        for policy in call.policies:
            argv += [repr(policy.rate.interval), repr(policy.tolerance)]
        try:
            outcome, wait = self._script(keys=keys, args=argv)
        except UNREACHABLE as exc:
            raise LimitStorageError(f"rate-limit storage unreachable: {exc}") from exc
        except redis.RedisError as exc:
            raise LimitStorageError(f"rate-limit storage failed: {exc}") from exc
        return Verdict(int(outcome), float(wait))

    def counters(self, key: str) -> dict[str, int]:
        """See :meth:`taskfleet.ratelimit.store_base.GcraStore.counters`."""
        raw: dict[bytes, bytes] = self.client.hgetall(key)  # type: ignore[assignment]
        return {_text(k): int(v) for k, v in raw.items()}

    def tallies(self, prefix: str) -> list[str]:
        """See :meth:`taskfleet.ratelimit.store_base.GcraStore.tallies`."""
        members: list[bytes] = self.client.zrevrange(INDEX_KEY, 0, -1)  # type: ignore[assignment]
        return [k for k in map(_text, members) if k.startswith(prefix)]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
