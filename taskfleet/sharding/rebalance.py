"""Resharding: move only the logical shards whose placement changes, resumably.

``taskfleet shards add|remove|rebalance`` all come here with the target list of shards. The
move is recorded in the catalog (``taskfleet_shard_moves``, one row per target map version)
and goes through these steps, each safe to run again after a crash:

1. ``plan``: the target placement (the map's strategy over the target shards) and the
   logical shards that change shard (about 1/N when going from N-1 to N with ``consistent``);
2. ``copy``: their rows are upserted from the old shard to the new one;
3. ``switch``: the target map is written as the next version (persisters follow it within
   their ``map_refresh_s``);
4. ``settle``: after ``grace_s`` the copy runs again, for rows that processes still on the old
   map wrote to the old shard meanwhile;
5. ``delete``: the moved rows are deleted from their old shards; the move is ``done``.

A copy never overwrites a newer row or a final state with an older or non-final one, so
copying twice, or after the new shard was written, is harmless.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, select, text
from sqlalchemy.dialects.postgresql import JSONB, insert

from taskfleet.results.store import ensure_schema
from taskfleet.sharding.cluster import ShardCluster
from taskfleet.sharding.copying import copy_rows, delete_rows
from taskfleet.sharding.shardmap import (
    MapConflict,
    ShardMap,
    ensure_catalog,
    load_map,
    write_map,
)
from taskfleet.sharding.strategies import Directory, strategy_named

MOVES_TABLE = "taskfleet_shard_moves"
#: Default wait between the switch and the second copy: one persister map refresh and more.
DEFAULT_GRACE_S = 15.0
STEPS = ("plan", "copy", "switch", "settle", "delete", "done")
DIRECTORY = Directory().name
ADD_STRATEGY_COLUMN = text(f"ALTER TABLE {MOVES_TABLE} ADD COLUMN IF NOT EXISTS strategy text")

moves_metadata = MetaData()
moves_table = Table(
    MOVES_TABLE,
    moves_metadata,
    Column("version", Integer, primary_key=True),  # the target map's version
    Column("shards", JSONB, nullable=False),
    Column("placement", JSONB, nullable=False),
    Column("step", String, nullable=False),
    # Added with ``taskfleet shards place`` (a move may change the strategy to directory).
    Column("strategy", String, nullable=True),
    Column("copied", Integer, nullable=False, server_default="0"),
    Column("deleted", Integer, nullable=False, server_default="0"),
)
log = logging.getLogger(__name__)


@dataclass
class Move:
    """One move: from ``source`` to ``target``, at ``step``, with rows counted."""

    source: ShardMap
    target: ShardMap
    step: str
    copied: int = 0
    deleted: int = 0

    @property
    def moved(self) -> dict[int, tuple[str, str]]:
        """Logical shard -> (old shard, new shard), for those that change."""
        pairs = zip(self.source.placement, self.target.placement, strict=True)
        return {i: (old, new) for i, (old, new) in enumerate(pairs) if old != new}

    @property
    def moved_fraction(self) -> float:
        """The fraction of logical shards that change shard."""
        return len(self.moved) / len(self.target.placement)


def _catalog(cluster: ShardCluster) -> Engine:
    return cluster.primary(cluster.names[0])


def _save(cluster: ShardCluster, move: Move) -> None:
    row = {
        "version": move.target.version,
        "shards": list(move.target.shards),
        "placement": list(move.target.placement),
        "strategy": move.target.strategy,
        "step": move.step,
        "copied": move.copied,
        "deleted": move.deleted,
    }
    statement = insert(moves_table).values(**row)
    statement = statement.on_conflict_do_update(
        index_elements=["version"],
        set_={k: statement.excluded[k] for k in ("step", "copied", "deleted")},
    )
    with _catalog(cluster).begin() as conn:
        conn.execute(statement)


def target_placement(
    current: ShardMap, shards: Sequence[str], assign: Mapping[int, str] | None = None
) -> tuple[str, tuple[str, ...]]:
    """The strategy and placement of the next map over ``shards``.

    ``assign`` (logical shard -> shard, ``taskfleet shards place``) makes the map a
    ``directory``: the current placement with those entries changed. A directory map stays
    one: a later ``add`` or ``remove`` keeps every entry whose shard remains, and places the
    others round-robin.
    """
    if assign is None and current.strategy != DIRECTORY:
        return current.strategy, strategy_named(current.strategy).place(
            list(shards), len(current.placement)
        )
    table = {i: s for i, s in enumerate(current.placement) if s in shards}
    table |= dict(assign or {})
    return DIRECTORY, Directory(table).place(list(shards), len(current.placement))


def plan(
    cluster: ShardCluster, shards: Sequence[str], assign: Mapping[int, str] | None = None
) -> Move:
    """The unfinished move if there is one (resume it), else a new one to ``shards``
    (``assign``: see :func:`target_placement`).

    Raises:
        ValueError: a target shard is not configured, or ``assign`` names a logical shard
            out of range.
    """
    unknown = set(shards) - set(cluster.names)
    if unknown:
        raise ValueError(f"not in TASKFLEET_DATABASE_URLS: {sorted(unknown)}")
    catalog = _catalog(cluster)
    ensure_catalog(catalog)
    with catalog.begin() as conn:
        moves_metadata.create_all(conn, checkfirst=True)
        conn.execute(ADD_STRATEGY_COLUMN)  # a moves table from before the column
        row = conn.execute(
            select(moves_table).where(moves_table.c.step != "done").order_by(moves_table.c.version)
        ).first()
    current = cluster.router.map
    if row is not None:
        target = ShardMap(row.version, current.strategy, tuple(row.shards), tuple(row.placement),
                          current.promoted)  # fmt: skip
        source = current if current.version < row.version else _previous(cluster, row.version)
        return Move(source, target, row.step, row.copied, row.deleted)
    out_of_range = [i for i in assign or {} if not 0 <= i < len(current.placement)]
    if out_of_range:
        raise ValueError(f"logical shards are 0..{len(current.placement) - 1}: {out_of_range}")
    strategy, placement = target_placement(current, shards, assign)
    target = ShardMap(current.version + 1, strategy, tuple(shards), placement, current.promoted)
    if placement == current.placement and tuple(shards) == current.shards:
        return Move(current, current, "done")  # nothing to move: no new version
    move = Move(current, target, "plan")
    _save(cluster, move)
    return move


def _previous(cluster: ShardCluster, version: int) -> ShardMap:
    found = load_map(_catalog(cluster), version - 1)
    if found is None:
        raise RuntimeError(f"shard map version {version - 1} is missing from the catalog")
    return found


def _pairs(move: Move) -> dict[tuple[str, str], set[int]]:
    pairs: dict[tuple[str, str], set[int]] = {}
    for logical, pair in move.moved.items():
        pairs.setdefault(pair, set()).add(logical)
    return pairs


def _copy_all(cluster: ShardCluster, move: Move) -> int:
    total = 0
    for (old, new), logicals in _pairs(move).items():
        ensure_schema(cluster.primary(new))
        total += copy_rows(cluster.primary(old), cluster.primary(new), logicals)
    return total


def rebalance(
    cluster: ShardCluster,
    shards: Sequence[str],
    *,
    grace_s: float = DEFAULT_GRACE_S,
    on_step: Callable[[Move], None] | None = None,
    assign: Mapping[int, str] | None = None,
) -> Move:
    """Move to ``shards`` (or finish the unfinished move), step by step (module docstring);
    ``assign`` places given logical shards on given shards (:func:`target_placement`)."""
    move = plan(cluster, shards, assign)

    def done(step: str) -> None:
        move.step = step
        _save(cluster, move)
        log.warning("rebalance to map version %d: %s done", move.target.version, step)
        if on_step is not None:
            on_step(move)

    if move.step == "plan":
        move.copied = _copy_all(cluster, move)
        done("copy")
    if move.step == "copy":
        if cluster.router.version < move.target.version:
            with contextlib.suppress(MapConflict):  # written before a crash: already switched
                write_map(_catalog(cluster), move.target)
        cluster.switch(move.target)
        done("switch")
    if move.step == "switch":
        time.sleep(grace_s)  # processes still on the old map: at most one map refresh
        move.copied += _copy_all(cluster, move)
        done("settle")
    if move.step == "settle":
        move.deleted = sum(
            delete_rows(cluster.primary(old), logicals)
            for (old, _), logicals in _pairs(move).items()
        )
        done("done")
    return move
