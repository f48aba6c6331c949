"""Slot groups: solo workers that a supervisor starts and stops, resized through Redis.

A solo worker is one process that runs its jobs inline; no remote control can grow it. On a
host run by ``taskfleet up``, the supervisor owns the host's solo CPU workers as one *slot
group*: it registers the group (its workers' node names and how many it runs) and applies
the size the autoscaler asks for by starting or stopping worker processes
(:mod:`taskfleet.fleet.scaling`). To the autoscaler a group is one resizable worker whose
concurrency is its process count.

Keys (beside the autoscaler's own, :mod:`taskfleet.scheduler.store`):

* ``slots`` -- hash, group id -> JSON ``{"queue", "size", "nodes", "at"}`` (``queue``: the
  pool's queue its workers consume, which tells fleets sharing a Redis apart), rewritten by the
  group's supervisor every :data:`REGISTER_EVERY_S` and on every change. An entry older than
  :data:`STALE_AFTER_S` belongs to a supervisor that is gone and is ignored (then dropped).
* ``slot-targets`` -- hash, group id -> the process count the autoscaler last asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import redis

from taskfleet.scheduler.store import KEY_PREFIX

SLOTS_KEY = KEY_PREFIX + "slots"
TARGETS_KEY = KEY_PREFIX + "slot-targets"
#: Seconds between two registrations of an unchanged group.
REGISTER_EVERY_S = 5.0
#: A registration this old belongs to a supervisor that stopped without saying so.
STALE_AFTER_S = 30.0
#: The most processes a target may ask for (a Redis client wrote nonsense otherwise).
MAX_SLOTS = 512


@dataclass(frozen=True)
class SlotGroup:
    """One supervisor's solo workers of one pool, as it last registered them."""

    group: str
    queue: str
    size: int
    nodes: tuple[str, ...]
    at: float

    def to_json(self) -> str:
        """The stored form."""
        return json.dumps(
            {"queue": self.queue, "size": self.size, "nodes": list(self.nodes), "at": self.at}
        )

    @classmethod
    def from_json(cls, group: str, raw: bytes | str) -> SlotGroup | None:
        """A group from its stored form (None if it is not one)."""
        try:
            data = json.loads(raw)
            return cls(
                group,
                str(data["queue"]),
                int(data["size"]),
                tuple(str(n) for n in data["nodes"]),
                float(data["at"]),
            )
        except (ValueError, KeyError, TypeError):
            return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class SlotRegistry:
    """Reads and writes the slot keys on one Redis client."""

    def __init__(self, client: redis.Redis) -> None:
        """Bind to ``client``."""
        self.client = client

    def register(self, group: SlotGroup) -> None:
        """Publish a group's current size and node names (its supervisor calls this)."""
        self.client.hset(SLOTS_KEY, group.group, group.to_json())

    def unregister(self, group: str) -> None:
        """Forget a group and its target (its supervisor stops)."""
        self.unregister_many([group])

    def groups(self, now: float) -> dict[str, SlotGroup]:
        """Live groups by id; stale entries are dropped from Redis."""
        live: dict[str, SlotGroup] = {}
        stale: list[str] = []
        for key, raw in self.client.hgetall(SLOTS_KEY).items():
            name = _text(key)
            group = SlotGroup.from_json(name, raw)
            if group is None or now - group.at > STALE_AFTER_S:
                stale.append(name)
            else:
                live[name] = group
        if stale:
            self.unregister_many(stale)
        return live

    def group(self, group: str) -> SlotGroup | None:
        """One group's registration, stale or not (None: not registered, or unreadable)."""
        raw = self.client.hget(SLOTS_KEY, group)
        return None if raw is None else SlotGroup.from_json(group, raw)

    def unregister_many(self, groups: list[str]) -> None:
        """Forget several groups at once."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hdel(SLOTS_KEY, *groups)
        pipe.hdel(TARGETS_KEY, *groups)
        pipe.execute()

    def close(self) -> None:
        """Close the Redis client's connections."""
        self.client.close()

    def set_target(self, group: str, size: int) -> None:
        """Ask a group's supervisor to run ``size`` processes."""
        self.client.hset(TARGETS_KEY, group, str(size))

    def target(self, group: str) -> int | None:
        """The size asked of ``group`` (None: nothing asked, or not a usable number)."""
        raw = self.client.hget(TARGETS_KEY, group)
        if raw is None:
            return None
        try:
            size = int(_text(raw))
        except ValueError:
            return None
        return size if 1 <= size <= MAX_SLOTS else None


def node_groups(groups: dict[str, SlotGroup], queue: str) -> dict[str, SlotGroup]:
    """Node name -> the group consuming ``queue`` it belongs to."""
    return {node: g for g in groups.values() if g.queue == queue for node in g.nodes}
