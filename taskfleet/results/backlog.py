"""The persistence stream's backlog: how long and how old it is, and its cap.

While Postgres is down, every result waits in the stream (a second copy of its Redis key).
:func:`stream_health` reports the stream's length, the entries read but not yet written
(pending) and the age of the oldest of each (``taskfleet results status``; the persister
logs it while it retries). The stream is capped at ``TASKFLEET_CACHE_PERSIST_STREAM_MAXLEN``
entries, a bound far above a normal backlog, and nothing over it is dropped silently:

* at ``WARN_FILL`` of the cap the persister warns (at most every ``WARN_INTERVAL_S``) and
  counts it (``near_cap`` in ``taskfleet:persist:stats``);
* over the cap it moves the oldest entries to the quarantine (category ``overflow``): the
  result's Redis key is kept without expiry and listed, and ``taskfleet results quarantine
  requeue`` puts them back in the stream once Postgres is back. Only the stream's copy
  leaves, so every result stays readable and nothing is lost.

Each persister joins the consumer group under its own name (host:pid), so every restart adds
a consumer: :func:`forget_idle_consumers` deletes those with nothing pending that have not
read for ``CONSUMER_FORGET_IDLE_MS`` (a live one reads every 100 ms), keeping the group's
consumer list as long as the persisters running.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import redis

from taskfleet.results.quarantine import Quarantine, record_from_entry

#: Fill of the cap at which the persister starts warning.
WARN_FILL = 0.8
WARN_INTERVAL_S = 60.0
STATS_KEY = "taskfleet:persist:stats"
#: Entries moved to the quarantine per XRANGE when over the cap.
SPILL_BATCH = 1000
MS_PER_S = 1000.0
#: How often the persister checks the stream against its cap (and on every logged retry).
CHECK_INTERVAL_S = 5.0
#: A consumer with nothing pending, silent this long, was a persister that is gone.
CONSUMER_FORGET_IDLE_MS = 3_600_000

# KEYS[1] stream. ARGV: group, idle ms. Deletes the group's consumers with nothing pending
# and idle at least that long; atomic, so none can take an entry in between.
FORGET_CONSUMERS_LUA = """
local gone = 0
for _, info in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local c = {}
  for i = 1, #info, 2 do c[info[i]] = info[i + 1] end
  if c['pending'] == 0 and c['idle'] >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], c['name'])
    gone = gone + 1
  end
end
return gone
"""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamHealth:
    """The stream at one moment (ages in seconds by Redis's clock; None when empty)."""

    length: int
    pending: int
    oldest_entry_age_s: float | None
    oldest_pending_age_s: float | None
    maxlen: int

    @property
    def fill(self) -> float:
        """Length as a fraction of the cap."""
        return self.length / self.maxlen if self.maxlen else 0.0

    def describe(self) -> str:
        """One line for logs and the CLI."""

        def age(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f}s"

        return (
            f"stream {self.length} entries ({self.fill:.0%} of cap {self.maxlen}), "
            f"oldest {age(self.oldest_entry_age_s)}; {self.pending} pending, "
            f"oldest pending {age(self.oldest_pending_age_s)}"
        )


def _age_s(entry_id: Any, now_ms: float) -> float | None:
    if not entry_id:
        return None
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    return max(0.0, (now_ms - int(text.partition("-")[0])) / MS_PER_S)


def stream_health(client: redis.Redis, stream: str, group: str, maxlen: int) -> StreamHealth:
    """Length, pending count and oldest ages of ``stream`` for consumer ``group``."""
    pipe = client.pipeline(transaction=False)
    pipe.time()
    pipe.xlen(stream)
    pipe.xrange(stream, "-", "+", count=1)
    pipe.xpending(stream, group)
    seconds_micros, length, first, pending = pipe.execute(raise_on_error=False)
    now_ms = seconds_micros[0] * MS_PER_S + seconds_micros[1] / MS_PER_S
    if isinstance(pending, redis.ResponseError):  # no group yet: nothing read
        pending = {"pending": 0, "min": None}
    return StreamHealth(
        length=int(length),
        pending=int(pending["pending"]),
        oldest_entry_age_s=_age_s(first[0][0] if first else None, now_ms),
        oldest_pending_age_s=_age_s(pending["min"] if pending["pending"] else None, now_ms),
        maxlen=maxlen,
    )


def spill_overflow(
    client: redis.Redis, stream: str, group: str, maxlen: int, quarantine: Quarantine
) -> int:
    """Move the oldest entries over ``maxlen`` to the quarantine; return how many moved."""
    moved = 0
    while (excess := int(client.xlen(stream)) - maxlen) > 0:
        entries: Any = client.xrange(stream, "-", "+", count=min(excess, SPILL_BATCH))
        if not entries:
            break
        reason = f"stream over its cap of {maxlen} entries (Postgres down or too slow)"
        pipe = client.pipeline(transaction=False)
        for entry_id, fields in entries:
            if fields:
                record, value = record_from_entry(entry_id, fields, "overflow", reason)
                quarantine.add(record, value, pipe=pipe)
        ids = [entry_id for entry_id, _ in entries]
        pipe.xack(stream, group, *ids)
        pipe.xdel(stream, *ids)
        pipe.hincrby(STATS_KEY, "overflow", len(ids))
        pipe.execute()
        moved += len(ids)
    return moved


def forget_idle_consumers(
    client: redis.Redis, stream: str, group: str, idle_ms: int = CONSUMER_FORGET_IDLE_MS
) -> int:
    """Delete ``group``'s consumers that hold nothing and were idle ``idle_ms``; how many."""
    return int(client.eval(FORGET_CONSUMERS_LUA, 1, stream, group, idle_ms))


class BacklogGuard:
    """The persister's periodic check of the stream against its cap."""

    def __init__(
        self, client: redis.Redis, stream: str, group: str, maxlen: int, quarantine: Quarantine
    ) -> None:
        """Watch ``stream`` (read by ``group``), capped at ``maxlen``, spilling to ``quarantine``."""
        self.client = client
        self.stream = stream
        self.group = group
        self.maxlen = maxlen
        self.quarantine = quarantine
        self._last_check = float("-inf")
        self._last_warning = float("-inf")

    def check(self, *, force: bool = False) -> tuple[StreamHealth | None, int]:
        """Every ``CHECK_INTERVAL_S`` (or when ``force``): warn near the cap, spill over it.

        Returns:
            The stream's health after any spill (None when not checked this time) and how
            many entries moved to the quarantine.
        """
        now = time.monotonic()
        if not force and now - self._last_check < CHECK_INTERVAL_S:
            return None, 0
        self._last_check = now
        health = stream_health(self.client, self.stream, self.group, self.maxlen)
        if health.fill >= WARN_FILL and now - self._last_warning >= WARN_INTERVAL_S:
            self._last_warning = now
            self.client.hincrby(STATS_KEY, "near_cap", 1)
            log.warning("result persister: near the stream cap: %s", health.describe())
        if health.length <= self.maxlen:
            return health, 0
        moved = spill_overflow(self.client, self.stream, self.group, self.maxlen, self.quarantine)
        health = stream_health(self.client, self.stream, self.group, self.maxlen)
        log.error(
            "result persister: stream over its cap of %d: moved the %d oldest entries to the "
            "quarantine (their results stay in Redis; run `taskfleet results quarantine "
            "requeue` once Postgres is back)",
            self.maxlen,
            moved,
        )
        return health, moved
