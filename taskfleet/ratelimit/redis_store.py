"""GCRA state on Redis: one Lua call per check (``gcra.lua``), shared by the whole fleet.

Written as a script rather than taken from ``limits``: ``limits`` has no GCRA, its hits
answer only yes or no (a refusal needs a second call for the reset time, ``retry_after``
here comes back with the verdict), it checks one limit per call (a job under a kind's and a
client's limit must be charged on both or neither), and it cannot book a future slot for a
deferred job. The script does all of that in one round trip, and at enqueue it also pushes
the jobs it admits (on a Redis broker that is also the limits' storage), so a limited
``enqueue`` costs the same one round trip as an unlimited one. Each state key expires when its
bucket is full again (its state then says nothing), so idle clients cost nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import redis

from taskfleet.ratelimit.errors import LimitStorageError
from taskfleet.ratelimit.store_base import INDEX_KEY, REFUSED, GcraCall, Verdict

LUA_PATH = Path(__file__).with_name("gcra.lua")
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, OSError)


class RedisGcraStore:
    """GCRA calls as one ``gcra.lua`` script call each. Thread-safe."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._script = client.register_script(LUA_PATH.read_text())

    def acquire(
        self,
        call: GcraCall,
        now: float,
        cost: int = 1,
        push: Sequence[tuple[str, Sequence[bytes | str]]] = (),
    ) -> Verdict:
        """See :meth:`taskfleet.ratelimit.store_base.GcraStore.acquire`."""
        keys: list[bytes | str] = call.redis_args[0]  # type: ignore[assignment]
        argv: list[bytes | str | int] = [b"%.6f" % now, b"%d" % cost, *call.redis_args[1]]
        if push:
            keys = list(keys)
            for list_key, values in push:
                keys.append(list_key)
                argv.append(len(values))
                argv += values
        if push:  # a failure may come after the push: it is the publish's, not ours
            outcome, wait = self._script(keys=keys, args=argv)
            return Verdict(int(outcome), float(wait), int(outcome) != REFUSED)
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
