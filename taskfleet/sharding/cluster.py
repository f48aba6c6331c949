"""The physical shards of one deployment: engines, the map, and where each read goes.

Writes go to a shard's primary (its replica once promoted, see ``taskfleet shards
promote``). Reads go to the replica while its replay lag is under ``max_lag_s``, else to the
primary; a read that must see its own write (``fresh=True``) goes to the primary. A read
whose primary does not answer falls over to the replica, whatever its lag (counted, logged).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from taskfleet.config.sharding import (
    DEFAULT_REPLICA_MAX_LAG_S,
    SHARD_NAME_PREFIX,
    ShardEndpoints,
    ShardingSettings,
)
from taskfleet.results.store import fetch_result, sqlalchemy_url
from taskfleet.sharding.shardmap import ShardMap, ShardRouter, initial_map, load_map, load_or_create
from taskfleet.sharding.strategies import HashMod

#: Seconds a connection attempt may take (a shard that does not answer is down).
CONNECT_TIMEOUT_S = 2
#: A replica's lag is measured at most this often (seconds).
LAG_CHECK_INTERVAL_S = 1.0
DEFAULT_POOL_SIZE = 2
#: Replay lag of a replica: 0 when it has replayed all it received, else the age of the last
#: replayed transaction; NULL when it is not a replica (promoted).
LAG_SQL = text(
    """
    SELECT CASE WHEN NOT pg_is_in_recovery() THEN NULL
                WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
                ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0)
           END
    """
)

log = logging.getLogger(__name__)


def shard_engine(url: str, pool_size: int = DEFAULT_POOL_SIZE) -> Engine:
    """An engine with a bounded, pre-pinged pool and a connect timeout."""
    return create_engine(
        sqlalchemy_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
    )


class ShardCluster:
    """Engines for every shard's primary and replica, and the router of the current map."""

    def __init__(
        self,
        endpoints: Sequence[ShardEndpoints],
        shard_map: ShardMap,
        *,
        max_lag_s: float = DEFAULT_REPLICA_MAX_LAG_S,
        pool_size: int = DEFAULT_POOL_SIZE,
    ) -> None:
        self.endpoints = {e.name: e for e in endpoints}
        self.router = ShardRouter(shard_map)
        self.max_lag_s = max_lag_s
        self.pool_size = pool_size
        self.counters: Counter[str] = Counter()
        self._engines: dict[str, Engine] = {}
        self._lags: dict[str, tuple[float, float | None]] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls, endpoints: Sequence[ShardEndpoints], strategy: str, **options: Any
    ) -> ShardCluster:
        """Read the newest map in the catalog (the first shard), writing version 1 if none.

        The catalog's replica is read too: once it was promoted, it holds the newer map.

        Raises:
            SQLAlchemyError: neither the catalog nor its replica answered.
        """
        found: list[ShardMap] = []
        failure: SQLAlchemyError | None = None
        names = [e.name for e in endpoints]
        for index, url in enumerate((endpoints[0].primary, *endpoints[0].replicas)):
            engine = shard_engine(url, 1)
            try:
                latest = load_or_create(engine, names, strategy) if index == 0 else load_map(engine)
            except SQLAlchemyError as exc:
                failure = exc
                continue
            finally:
                engine.dispose()
            if latest is not None:
                found.append(latest)
        if not found:
            assert failure is not None
            raise failure
        return cls(endpoints, max(found, key=lambda m: m.version), **options)

    @classmethod
    def from_settings(cls, settings: ShardingSettings) -> ShardCluster | None:
        """The cluster ``TASKFLEET_DATABASE_URLS`` describes; None when it is unset."""
        if not settings.shards:
            return None
        return cls.open(
            settings.shards, settings.shard_strategy, max_lag_s=settings.replica_max_lag
        )

    @classmethod
    def single(cls, url: str, **options: Any) -> ShardCluster:
        """One database as a one-shard cluster (unsharded mode), writing no map."""
        endpoints = [ShardEndpoints(f"{SHARD_NAME_PREFIX}0", url)]
        return cls(endpoints, initial_map([endpoints[0].name], HashMod().name), **options)

    def switch(self, shard_map: ShardMap) -> None:
        """Follow ``shard_map`` from now on (a newer version)."""
        self.router = ShardRouter(shard_map)

    def refresh(self) -> bool:
        """Follow a newer map version if the catalog (or its replica) has one."""
        catalog = self.endpoints[self.names[0]]
        newest = self.router.map
        for url in dict.fromkeys((self.primary_url(catalog.name), *catalog.replicas)):
            try:
                found = load_map(self._engine(url))
            except SQLAlchemyError:
                continue
            if found is not None and found.version > newest.version:
                newest = found
        if newest is self.router.map:
            return False
        log.warning("shard map: version %d -> %d", self.router.version, newest.version)
        self.switch(newest)
        return True

    @property
    def names(self) -> list[str]:
        """The physical shards, in configuration order."""
        return list(self.endpoints)

    def _engine(self, url: str) -> Engine:
        with self._lock:
            engine = self._engines.get(url)
            if engine is None:
                engine = self._engines[url] = shard_engine(url, self.pool_size)
            return engine

    def primary_url(self, shard: str) -> str:
        """The URL writes of ``shard`` go to (its replica's, once promoted)."""
        endpoints = self.endpoints[shard]
        if shard in self.router.map.promoted and endpoints.replicas:
            return endpoints.replicas[0]
        return endpoints.primary

    def replica_url(self, shard: str) -> str | None:
        """The URL of ``shard``'s replica, if it has one still serving as a replica."""
        endpoints = self.endpoints[shard]
        if shard in self.router.map.promoted or not endpoints.replicas:
            return None
        return endpoints.replicas[0]

    def primary(self, shard: str) -> Engine:
        """The engine writes of ``shard`` go to."""
        return self._engine(self.primary_url(shard))

    def replica(self, shard: str) -> Engine | None:
        """The engine of ``shard``'s replica, if any."""
        url = self.replica_url(shard)
        return None if url is None else self._engine(url)

    def replica_lag(self, shard: str, *, cached: bool = True) -> float | None:
        """Seconds ``shard``'s replica is behind; None without a reachable replica."""
        replica = self.replica(shard)
        if replica is None:
            return None
        now = time.monotonic()
        checked = self._lags.get(shard)
        if cached and checked is not None and now - checked[0] < LAG_CHECK_INTERVAL_S:
            return checked[1]
        try:
            with replica.connect() as conn:
                raw = conn.execute(LAG_SQL).scalar()
            lag = None if raw is None else float(raw)
        except SQLAlchemyError:
            lag = None
        self._lags[shard] = (now, lag)
        return lag

    def read_engine(self, shard: str, *, fresh: bool = False) -> Engine:
        """The replica when fresh enough (and ``fresh`` is not asked), else the primary."""
        if not fresh:
            lag = self.replica_lag(shard)
            replica = self.replica(shard)
            if replica is not None and lag is not None and lag < self.max_lag_s:
                self.counters["replica_reads"] += 1
                return replica
        self.counters["primary_reads"] += 1
        return self.primary(shard)

    def fetch_result(self, key: str, *, fresh: bool = False) -> dict[str, Any] | None:
        """The stored meta of ``key``, from its shard; the replica if the primary is down.

        Raises:
            SQLAlchemyError: neither the chosen engine nor the replica answered.
        """
        shard = self.router.shard_of(key)
        engine = self.read_engine(shard, fresh=fresh)
        try:
            return fetch_result(engine, key)
        except SQLAlchemyError as exc:
            replica = self.replica(shard)
            if replica is None or replica is engine:
                raise
            self.counters["read_failovers"] += 1
            log.warning("shard %s: primary read failed (%s); reading its replica", shard, exc)
            return fetch_result(replica, key)

    def dispose(self) -> None:
        """Close every pool."""
        with self._lock:
            engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            engine.dispose()
