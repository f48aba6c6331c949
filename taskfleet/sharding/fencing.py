"""Fencing a demoted primary: once its replica is promoted, the old server refuses writes.

A process still on the old map (until its next refresh, ``map_refresh_s``) would write to the
old primary if it came back. Fencing sets ``default_transaction_read_only`` on that server
(``ALTER SYSTEM``, then a configuration reload), so such a write fails and its result stays
in the stream until the writer follows the new map. ``taskfleet shards promote`` fences at
once when the old server answers; one that does not is fenced when it is seen again: by
every sharded persister at each map refresh, by ``taskfleet shards status`` and by
``taskfleet shards fence``.
"""

from __future__ import annotations

import logging

from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from taskfleet.results.store import sqlalchemy_url
from taskfleet.sharding.cluster import ShardCluster

#: How long fencing waits to reach a demoted primary (it is usually down).
FENCE_CONNECT_TIMEOUT_S = 2
READ_ONLY_SQL = text("SHOW default_transaction_read_only")
FENCE_SQL = text("ALTER SYSTEM SET default_transaction_read_only = on")
RELOAD_SQL = text("SELECT pg_reload_conf()")
FENCED, UNREACHABLE, NOT_PROMOTED = "fenced", "unreachable", "not promoted"

log = logging.getLogger(__name__)


def fence(cluster: ShardCluster, shard: str) -> str:
    """Make ``shard``'s demoted primary refuse writes, if it answers.

    Returns:
        ``fenced`` (done now or earlier), ``unreachable``, or ``not promoted``.
    """
    if shard not in cluster.router.map.promoted:
        return NOT_PROMOTED
    old = cluster.endpoints[shard].primary
    engine = create_engine(
        sqlalchemy_url(old),
        isolation_level="AUTOCOMMIT",
        poolclass=NullPool,
        connect_args={"connect_timeout": FENCE_CONNECT_TIMEOUT_S},
    )
    try:
        with engine.connect() as conn:
            if conn.execute(READ_ONLY_SQL).scalar() == "on":
                return FENCED
            conn.execute(FENCE_SQL)
            conn.execute(RELOAD_SQL)
    except SQLAlchemyError:
        return UNREACHABLE
    finally:
        engine.dispose()
    log.warning("shard %s: demoted primary fenced (read-only)", shard)
    return FENCED


def fence_demoted(cluster: ShardCluster) -> dict[str, str]:
    """:func:`fence` every promoted shard's old primary."""
    return {shard: fence(cluster, shard) for shard in sorted(cluster.router.map.promoted)}
