"""Operator commands on the cluster: promote a replica, and the status of every shard (which
fences a demoted primary it finds answering)."""

from __future__ import annotations

import logging
from typing import Any

import redis
from sqlalchemy import text

from taskfleet.resilience.storage import RedisStorage, StorageError
from taskfleet.sharding.cluster import ShardCluster, shard_engine
from taskfleet.sharding.fencing import fence
from taskfleet.sharding.persister import BREAKER_PREFIX
from taskfleet.sharding.query import ResultStore
from taskfleet.sharding.shardmap import ShardMap, ensure_catalog, write_map

#: Seconds pg_promote() waits for the replica to leave recovery.
PROMOTE_WAIT_S = 60
PROMOTE_SQL = text("SELECT pg_promote(true, :wait)")
IN_RECOVERY_SQL = text("SELECT pg_is_in_recovery()")

log = logging.getLogger(__name__)


def promote(cluster: ShardCluster, shard: str) -> ShardMap:
    """Promote ``shard``'s replica (pg_promote) and write the map naming it the primary.

    Safe to run again after a crash between the two steps (a replica already promoted is
    not promoted twice). Then :func:`taskfleet.sharding.fencing.fence` the old primary (the
    CLI does; persisters do at their next map refresh): rows it took after the last one
    replicated are not on the new primary.

    Raises:
        ValueError: ``shard`` is unknown or has no replica to promote.
        RuntimeError: the replica did not leave recovery in time.
    """
    if shard not in cluster.endpoints:
        raise ValueError(f"unknown shard {shard!r} (shards: {', '.join(cluster.names)})")
    replica_url = cluster.replica_url(shard)
    if replica_url is None:
        raise ValueError(f"shard {shard} has no replica to promote")
    engine = shard_engine(replica_url, 1)
    try:
        with engine.begin() as conn:
            if (
                conn.execute(IN_RECOVERY_SQL).scalar()
                and not conn.execute(PROMOTE_SQL, {"wait": PROMOTE_WAIT_S}).scalar()
            ):
                raise RuntimeError(f"shard {shard}: replica not promoted in {PROMOTE_WAIT_S}s")
    finally:
        engine.dispose()
    new_map = cluster.router.map.with_promoted(shard)
    catalog = cluster.names[0]
    catalog_engine = shard_engine(replica_url if shard == catalog else cluster.primary_url(catalog))
    try:
        ensure_catalog(catalog_engine)
        write_map(catalog_engine, new_map)
    finally:
        catalog_engine.dispose()
    cluster.switch(new_map)
    log.warning("shard %s: replica promoted; map version %d", shard, new_map.version)
    return new_map


def breaker_state(client: redis.Redis, shard: str) -> str:
    """The fleet-wide state of ``shard``'s write breaker."""
    try:
        return str(RedisStorage(client).snapshot(f"{BREAKER_PREFIX}{shard}")["state"])
    except StorageError:
        return "unknown"


def status(cluster: ShardCluster, client: redis.Redis | None) -> dict[str, Any]:
    """The map and, per shard: logical shards, rows, replica lag, breaker state."""
    shard_map = cluster.router.map
    store = ResultStore(cluster)
    try:
        rows = store.counts_by_shard()
    finally:
        store.close()
    shards = {}
    for name in cluster.names:
        shards[name] = {
            "logical_shards": shard_map.placement.count(name),
            "rows": rows.value.get(name),
            "error": rows.missing.get(name),
            "promoted": name in shard_map.promoted,
            "old_primary": fence(cluster, name) if name in shard_map.promoted else None,
            "replica_lag_s": cluster.replica_lag(name, cached=False),
            "breaker": breaker_state(client, name) if client is not None else "unknown",
        }
    return {"version": shard_map.version, "strategy": shard_map.strategy, "shards": shards}
