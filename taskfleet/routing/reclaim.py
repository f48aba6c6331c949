"""Restore a dead consumer's unacked deliveries within seconds, not after the visibility timeout.

Every worker's heartbeat sidecar (``taskfleet.workers.heartbeat``) runs a pass when it starts
and every ``reclaim_interval`` (jittered) after: it lists the owners recording in this unacked
hash (``taskfleet.routing.owners``), and for each one whose heartbeat key has expired puts its
deliveries back on their queues, the way kombu's ``QoS.restore_by_tag`` would after the
visibility timeout: same payload marked ``redelivered``, same priority sub-list, pushed on the
side BRPOP takes next, removed from ``unacked`` and ``unacked_index``.

**Atomic per dead owner, once per delivery.** The messages are computed in Python with
kombu's own ``Channel._do_restore_message`` (a recording pipe takes its pushes), then one Lua
script per owner checks and moves them: it does nothing if the owner's heartbeat is back, and
restores a tag only if the owner's hash still holds it with the same stamp, ``unacked_index``
has it with that score and ``unacked`` has the very record that was read. It drops the tag
from the owner as it goes, so a second reclaimer racing on the same owner restores nothing
twice, and a tag restored and delivered to another consumer since (a new score) is left alone.

**Only owner-tagged deliveries.** A delivery with no owner entry (a worker on stock
kombu's transport, ``TASKFLEET_FAST_TRANSPORT=false``, or one whose sidecar never started)
is never touched here: it stays in ``unacked`` until kombu's own visibility-timeout restore
(``QoS.restore_visible``, which every worker on either transport runs) puts it back.

Hand-written Lua, because nothing fits: kombu's ``restore_by_tag`` is one WATCH/MULTI per tag
on the whole ``unacked`` hash, which every ack of the fleet modifies (on a busy fleet it
retries without end), and it cannot tell whose delivery a tag is.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import redis
from kombu.utils.encoding import bytes_to_str

from taskfleet.routing import owners
from taskfleet.routing.restore import restore_pushes

log = logging.getLogger(__name__)

#: A dead owner left with nothing is forgotten this long after its last heartbeat: a record
#: its last write carried may land after it died, and the next pass still finds it.
FORGET_AFTER_S = 60.0
#: After a Redis restart, owners are not judged dead for this many heartbeat TTLs.
RESTART_GRACE_TTLS = 2.0
#: Counters of the passes (``passes``, ``restored``) per unacked hash, for operators and tests.
STATS_PREFIX = "taskfleet:reclaim:"

RESTORE_LUA = """
-- KEYS: unacked, unacked_index, owner's tags, owner's alive key, registry, then queue lists.
-- ARGV: owner id, forget-before time, tag count; per tag: tag, stamp, record, push count;
-- per push: command (LPUSH/RPUSH), index in KEYS of its list, payload.
if redis.call('EXISTS', KEYS[4]) == 1 then return -1 end
local restored, i = 0, 4
for _ = 1, tonumber(ARGV[3]) do
  local tag, stamp, record = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local pushes = tonumber(ARGV[i + 3])
  i = i + 4
  local held = redis.call('HGET', KEYS[3], tag)
  if held and tonumber(held) == tonumber(stamp) then
    local score = redis.call('ZSCORE', KEYS[2], tag)
    if pushes > 0 and score and tonumber(score) == tonumber(stamp)
        and redis.call('HGET', KEYS[1], tag) == record then
      for p = i, i + 3 * (pushes - 1), 3 do
        redis.call(ARGV[p], KEYS[tonumber(ARGV[p + 1])], ARGV[p + 2])
      end
      redis.call('HDEL', KEYS[1], tag)
      redis.call('ZREM', KEYS[2], tag)
      restored = restored + 1
    end
    redis.call('HDEL', KEYS[3], tag)
  end
  i = i + 3 * pushes
end
if redis.call('EXISTS', KEYS[3]) == 0 then
  local seen = redis.call('ZSCORE', KEYS[5], ARGV[1])
  if seen and tonumber(seen) < tonumber(ARGV[2]) then redis.call('ZREM', KEYS[5], ARGV[1]) end
end
return restored
"""


def redis_uptime(client: Any) -> float:
    """Seconds since the Redis server started."""
    return float(client.info("server")["uptime_in_seconds"])


@dataclass(frozen=True)
class Plan:
    """What one Lua call will check and move for a dead owner."""

    owner: str
    keys: list[str]
    args: list[Any]
    tags: int


class Reclaimer:
    """Restores the deliveries of dead owners recording in one channel's unacked hash.

    Args:
        channel: A kombu Redis channel configured like the workers' (its priority steps and
            exchange bindings decide where a message goes back).
        client: The Redis client to use (default: one on the channel's pool).
        forget_after: See :data:`FORGET_AFTER_S`.
        restart_grace: Seconds after Redis (re)starts during which no owner counts as dead:
            a restart longer than the heartbeat TTL expires every alive key at once, and
            live workers need a heartbeat to say so again.
    """

    def __init__(
        self,
        channel: Any,
        client: redis.Redis | None = None,
        forget_after: float = FORGET_AFTER_S,
        restart_grace: float = 0.0,
    ) -> None:
        self.channel = channel
        self.client = client or redis.Redis(connection_pool=channel.pool)
        self.unacked_key: str = channel.unacked_key
        self.index_key: str = channel.unacked_index_key
        self.registry = owners.registry_key(self.unacked_key)
        self.forget_after = forget_after
        self.restart_grace = restart_grace
        self._script = self.client.register_script(RESTORE_LUA)

    def dead_owners(self) -> list[str]:
        """Owners of this unacked hash whose heartbeat key has expired (none just after a
        Redis restart, see ``restart_grace``)."""
        if self.restart_grace and redis_uptime(self.client) < self.restart_grace:
            return []
        listed = [bytes_to_str(o) for o in self.client.zrange(self.registry, 0, -1)]
        if not listed:
            return []
        beats = self.client.mget([owners.alive_key(o) for o in listed])
        return [o for o, beat in zip(listed, beats, strict=True) if beat is None]

    def plan(self, owner: str) -> Plan:
        """Read a dead owner's deliveries and compute their restored messages."""
        held: dict[Any, Any] = self.client.hgetall(owners.tags_key(owner))
        # Newest first: each is pushed on the side BRPOP takes, so the oldest runs first.
        tags = sorted(held, key=lambda tag: float(held[tag]), reverse=True)
        records = self.client.hmget(self.unacked_key, tags) if tags else []
        keys = [
            self.unacked_key,
            self.index_key,
            owners.tags_key(owner),
            owners.alive_key(owner),
            self.registry,
        ]
        slots: dict[str, int] = {}
        args: list[Any] = [owner, repr(time.time() - self.forget_after), len(tags)]
        for tag, record in zip(tags, records, strict=True):
            pushes = [] if record is None else self._pushes(tag, record)
            args += [tag, held[tag], record or b"", len(pushes)]
            for command, key, payload in pushes:
                if key not in slots:
                    keys.append(key)
                    slots[key] = len(keys)  # Lua indexes KEYS from 1
                args += [command, slots[key], payload]
        return Plan(owner, keys, args, len(tags))

    def commit(self, plan: Plan) -> int:
        """Run the plan's Lua call: deliveries restored, or -1 if the owner is alive again."""
        return int(self._script(keys=plan.keys, args=plan.args))

    def reclaim(self, owner: str) -> int:
        """Restore one dead owner's deliveries (see :meth:`commit` for the result)."""
        restored = self.commit(self.plan(owner))
        if restored > 0:
            log.warning("restored %d deliveries of dead consumer %s", restored, owner)
        return restored

    def run_pass(self) -> int:
        """Restore the deliveries of every dead owner; returns how many were restored."""
        restored = sum(max(self.reclaim(owner), 0) for owner in self.dead_owners())
        if restored:
            self.client.hincrby(STATS_PREFIX + self.unacked_key, "restored", restored)
        return restored

    def _pushes(self, tag: Any, record: Any) -> list[tuple[str, str, Any]]:
        """The pushes kombu's restore would make for an unacked record (none if it cannot)."""
        try:
            return restore_pushes(self.channel, record)
        except Exception:  # left to the visibility timeout, like kombu's own failures
            log.exception("cannot restore delivery %r: left for the visibility timeout", tag)
            return []


def main() -> None:
    """``python -m taskfleet.routing.reclaim``: one pass, run by a sidecar when needed.

    With ``owner`` set (its worker exited), that owner's heartbeat is ended and its
    deliveries restored first.
    """
    from kombu import Connection

    from taskfleet.routing.transport import TRANSPORT_PATH
    from taskfleet.sidecar import LOG_FORMAT, RECLAIM_ENV

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    job = json.loads(os.environ[RECLAIM_ENV])
    options = job["transport_options"]
    connection = Connection(job["broker_url"], transport=TRANSPORT_PATH, transport_options=options)
    try:
        reclaimer = Reclaimer(
            connection.default_channel,
            forget_after=job["forget_after"],
            restart_grace=job["restart_grace"],
        )
        owner = job.get("owner")
        if owner:
            reclaimer.client.delete(owners.alive_key(owner))
            reclaimer.reclaim(owner)
        reclaimer.run_pass()
        if job.get("lock"):
            reclaimer.client.delete(job["lock"])
    finally:
        connection.release()


if __name__ == "__main__":
    main()
