"""The shard map (versioned, in the catalog database, changed only by a command); routing.

The catalog is the first physical shard's primary. The map lives there (table
``taskfleet_shard_map``, one row per version, never updated), not in Redis: Redis is a
bounded cache that may be flushed, and the map decides where durable results are, so it
must be as durable as they are. Every process reads the newest version when it opens the
cluster; ``taskfleet shards ...`` commands write a new version (compare-and-set on the
version number, so two concurrent commands cannot both win).

:class:`ShardRouter` routes a key with one CRC-32 and two tuple lookups (0.2-0.25 µs:
``python -m bench --only S1``).
"""

from __future__ import annotations

import contextlib
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    func,
    insert,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError

from taskfleet.sharding.strategies import LOGICAL_SHARDS, Placement, strategy_named

MAP_TABLE = "taskfleet_shard_map"

catalog_metadata = MetaData()
map_table = Table(
    MAP_TABLE,
    catalog_metadata,
    Column("version", Integer, primary_key=True),
    Column("strategy", String, nullable=False),
    Column("shards", JSONB, nullable=False),
    Column("placement", JSONB, nullable=False),
    Column("promoted", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)


T = TypeVar("T")


class MapConflict(RuntimeError):
    """Another command wrote this map version first: read the map again and retry."""


@dataclass(frozen=True)
class ShardMap:
    """One version of the map.

    Attributes:
        version: increases by one with every change.
        strategy: the strategy that computed ``placement``.
        shards: the physical shards, in configuration order.
        placement: item ``i`` is the physical shard of logical shard ``i``.
        promoted: shards whose replica was promoted (it is their primary now).
    """

    version: int
    strategy: str
    shards: tuple[str, ...]
    placement: Placement
    promoted: frozenset[str] = field(default_factory=frozenset)

    def with_promoted(self, shard: str) -> ShardMap:
        """The next version, with ``shard``'s replica as its primary."""
        return replace(self, version=self.version + 1, promoted=self.promoted | {shard})


def initial_map(shards: Sequence[str], strategy: str, count: int = LOGICAL_SHARDS) -> ShardMap:
    """Version 1: ``shards`` placed by ``strategy``."""
    placement = strategy_named(strategy).place(shards, count)
    return ShardMap(1, strategy, tuple(shards), placement)


def ensure_catalog(engine: Engine) -> None:
    """Create the map table if missing."""
    with engine.begin() as conn:
        catalog_metadata.create_all(conn, checkfirst=True)


def load_map(engine: Engine, version: int | None = None) -> ShardMap | None:
    """The newest version (or ``version``), or None before the first one is written."""
    query = select(map_table).order_by(map_table.c.version.desc()).limit(1)
    if version is not None:
        query = query.where(map_table.c.version == version)
    with engine.connect() as conn:
        row = conn.execute(query).first()
    if row is None:
        return None
    return ShardMap(
        version=row.version,
        strategy=row.strategy,
        shards=tuple(row.shards),
        placement=tuple(row.placement),
        promoted=frozenset(row.promoted),
    )


def write_map(engine: Engine, shard_map: ShardMap) -> None:
    """Store ``shard_map`` as a new version.

    Raises:
        MapConflict: that version exists already.
    """
    row = {
        "version": shard_map.version,
        "strategy": shard_map.strategy,
        "shards": list(shard_map.shards),
        "placement": list(shard_map.placement),
        "promoted": sorted(shard_map.promoted),
    }
    try:
        with engine.begin() as conn:
            conn.execute(insert(map_table).values(**row))
    except IntegrityError as exc:
        raise MapConflict(f"shard map version {shard_map.version} exists already") from exc


def load_or_create(engine: Engine, shards: Sequence[str], strategy: str) -> ShardMap:
    """The newest map; the first process to find none writes version 1.

    Raises:
        ValueError: the stored map names shards the configuration does not list (the
            configuration may list more: shards being added, or removed from the map).
    """
    ensure_catalog(engine)
    current = load_map(engine)
    if current is None:
        with contextlib.suppress(MapConflict):  # another process wrote it first: read theirs
            write_map(engine, initial_map(shards, strategy))
        current = load_map(engine)
    assert current is not None
    if not set(current.shards) <= set(shards):
        raise ValueError(
            f"the shard map (version {current.version}) has shards {list(current.shards)}, "
            f"the configuration {list(shards)}: change the map with 'taskfleet shards'"
        )
    return current


class ShardRouter:
    """Key -> physical shard name, for one version of the map."""

    def __init__(self, shard_map: ShardMap) -> None:
        self.map = shard_map
        self._count = len(shard_map.placement)
        self._placement = shard_map.placement

    @property
    def version(self) -> int:
        """The map version this router follows."""
        return self.map.version

    def shard_of(self, key: str) -> str:
        """The physical shard holding ``key``."""
        return self._placement[zlib.crc32(key.encode("utf-8", "surrogatepass")) % self._count]

    def group(self, items: Iterable[T], key: Callable[[T], str]) -> dict[str, list[T]]:
        """``items`` grouped by the shard of ``key(item)``, each group in input order."""
        groups: defaultdict[str, list[T]] = defaultdict(list)
        shard_of = self.shard_of
        for item in items:
            groups[shard_of(key(item))].append(item)
        return dict(groups)
