"""Moving jobs out of a worker group that has no live consumer, into one that has.

Enqueue-time failover (:mod:`taskfleet.routing.groups`) sends new jobs away from a dead
group; this moves the jobs already queued there, and those a dead worker held (the reclaimer
restores them to the group's queue first). Every heartbeat sidecar runs a pass with its
dead-consumer watch (``TASKFLEET_RESILIENCE_RECLAIM_INTERVAL``): per pool, one round trip
counting each group queue's live consumers (``taskfleet:consumers:<queue>``, a heartbeat
within the TTL) and its recent ones (within ``SWEEP_GRACE_TTLS`` more TTLs). Only when some
group has had no live consumer for that grace and another has one, the backlogs are read and
each dead group's priority sub-lists are moved to the same sub-lists of the live group with
the least backlog. The grace keeps a group's jobs home while its worker restarts.

A move is one Lua script of ``RPOPLPUSH``: each message leaves one list and enters the other
in one atomic step, so none is lost or doubled, whoever else sweeps at the same time; the
moved jobs keep their order. A moved job's envelope still names its first queue, so if it is
later restored (its worker died too) it goes back there, and is swept again. A group only
slow (its oldest job too old) is not swept: its workers still run what it holds.

Only the standard library is imported: the sidecar runs this.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

#: Moves up to ARGV[2] messages from each of the ARGV[1] source sub-lists (KEYS[1..n]) to the
#: matching destination sub-list (KEYS[n+1..2n]); returns how many moved.
MOVE_LUA = (
    "local steps, limit, moved = tonumber(ARGV[1]), tonumber(ARGV[2]), 0 "
    "for s = 1, steps do "
    "  while moved < limit and redis.call('RPOPLPUSH', KEYS[s], KEYS[steps + s]) do "
    "    moved = moved + 1 end end "
    "return moved"
)
#: A group is swept once it has had no live consumer for this many heartbeat TTLs more.
SWEEP_GRACE_TTLS = 1.0
#: Most messages one script moves (a pass moves the rest next time: Redis is never blocked).
MOVE_BATCH = 1000

#: One group queue, as the sidecar's config names it: its consumers key and its sub-lists.
GroupQueue = dict[str, Any]
Execute = Callable[..., list[Any]]


def sweep(execute: Execute, pools: Sequence[Sequence[GroupQueue]], now: float, ttl: float) -> int:
    """One pass over every pool's group queues; returns how many jobs moved.

    Args:
        execute: Runs Redis commands in one round trip, returns their replies.
        pools: Per pool, its group queues: ``{"consumers": key, "lists": [sub-lists]}``.
        now: The time (seconds since the epoch) heartbeats are compared with.
        ttl: A consumer whose last heartbeat is older than this (seconds) is not live.
    """
    moved = 0
    for groups in pools:
        since = (now - ttl, now - ttl * (1 + SWEEP_GRACE_TTLS))
        counts = execute(
            *(["ZCOUNT", g["consumers"], repr(t), "+inf"] for g in groups for t in since)
        )
        live, recent = counts[0::2], counts[1::2]
        if all(recent) or not any(live):
            continue
        steps = len(groups[0]["lists"])
        sizes = execute(*(["LLEN", key] for g in groups for key in g["lists"]))
        backlog = [sum(sizes[i * steps : (i + 1) * steps]) for i in range(len(groups))]
        target = min((i for i, n in enumerate(live) if n), key=lambda i: backlog[i])
        for i, group in enumerate(groups):
            if recent[i] or not backlog[i]:
                continue
            keys = [*group["lists"], *groups[target]["lists"]]
            [count] = execute(["EVAL", MOVE_LUA, len(keys), *keys, steps, MOVE_BATCH])
            moved += int(count)
    return moved
