"""Key -> logical shard (a stable hash), and the strategies placing logical shards.

Each strategy turns the list of physical shard names into a placement, a tuple whose
item ``i`` names the physical shard of logical shard ``i``. The placement is computed once,
when the map is written (``taskfleet shards ...``), and stored: routing never runs a
strategy, it reads the stored placement.

- ``consistent`` (default): a ketama ring with virtual nodes (``uhashring``); adding a
  physical shard moves about 1/N of the logical shards.
- ``hash-mod``: logical shard modulo N; simple, moves most shards when N changes.
- ``range``: contiguous runs of logical shards (Vitess-style keyspace ranges).
- ``directory``: an explicit table (logical -> physical), round-robin where it says nothing.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from uhashring import HashRing

#: Logical shards: many more than physical ones, so a placement moves in small units. Fixed
#: for the life of a deployment: physical shards are added by moving logical ones.
LOGICAL_SHARDS = 256
#: Virtual nodes per physical shard on the ring (uhashring's ketama default is 40 per weight).
DEFAULT_VNODES = 160
RING_KEY_PREFIX = "logical-"

Placement = tuple[str, ...]


class PlacementStrategy(Protocol):
    """Places ``count`` logical shards on the named physical shards."""

    @property
    def name(self) -> str:
        """The strategy's name in settings and in the map."""

    def place(self, shards: Sequence[str], count: int = LOGICAL_SHARDS) -> Placement:
        """The physical shard of each logical shard."""


def logical_shard(key: str, count: int = LOGICAL_SHARDS) -> int:
    """The logical shard of ``key``: CRC-32 (zlib, in C) of its UTF-8 bytes, modulo ``count``.

    Stable across processes and releases (Python's ``hash()`` is salted per process).
    """
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % count


def _require(shards: Sequence[str]) -> None:
    if not shards:
        raise ValueError("a placement needs at least one physical shard")


@dataclass(frozen=True)
class ConsistentHash:
    """Ketama ring with ``vnodes`` virtual nodes per physical shard."""

    vnodes: int = DEFAULT_VNODES
    name: str = "consistent"

    def place(self, shards: Sequence[str], count: int = LOGICAL_SHARDS) -> Placement:
        """Each logical shard goes to the ring node of ``logical-<i>``."""
        _require(shards)
        ring = HashRing(nodes={s: {"vnodes": self.vnodes} for s in shards}, hash_fn="ketama")
        return tuple(str(ring.get_node(f"{RING_KEY_PREFIX}{i}")) for i in range(count))


@dataclass(frozen=True)
class HashMod:
    """Logical shard ``i`` on physical shard ``i mod N``."""

    name: str = "hash-mod"

    def place(self, shards: Sequence[str], count: int = LOGICAL_SHARDS) -> Placement:
        """Round-robin over the physical shards."""
        _require(shards)
        return tuple(shards[i % len(shards)] for i in range(count))


@dataclass(frozen=True)
class Range:
    """Physical shard ``k`` holds the ``k``-th of N contiguous runs of logical shards."""

    name: str = "range"

    def place(self, shards: Sequence[str], count: int = LOGICAL_SHARDS) -> Placement:
        """Contiguous, nearly equal runs."""
        _require(shards)
        return tuple(shards[i * len(shards) // count] for i in range(count))


@dataclass(frozen=True)
class Directory:
    """An explicit table; logical shards it does not name go round-robin."""

    table: Mapping[int, str] = field(default_factory=dict)
    name: str = "directory"

    def place(self, shards: Sequence[str], count: int = LOGICAL_SHARDS) -> Placement:
        """The table's entry, else ``i mod N``.

        Raises:
            ValueError: the table names a shard that is not in ``shards``.
        """
        _require(shards)
        unknown = set(self.table.values()) - set(shards)
        if unknown:
            raise ValueError(f"directory names unknown shards: {sorted(unknown)}")
        return tuple(self.table.get(i, shards[i % len(shards)]) for i in range(count))


STRATEGIES: dict[str, PlacementStrategy] = {
    s.name: s for s in (ConsistentHash(), HashMod(), Range(), Directory())
}


def strategy_named(name: str) -> PlacementStrategy:
    """The strategy called ``name``.

    Raises:
        ValueError: no such strategy.
    """
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown placement strategy {name!r} ({', '.join(STRATEGIES)})") from None
