"""The persister of sharded results: each batch is split by shard and landed on each shard.

Every group goes through :func:`taskfleet.results.batch.write_batch` on its shard's primary,
in parallel (one thread per shard), so bisection, text storage and the quarantine work per
shard exactly as unsharded. Only the entries of shards that committed are acknowledged.

A shard whose primary does not answer is taken out of writes by its circuit breaker (state
in Redis, so the whole fleet sees it; ``taskfleet shards status`` shows it): its entries stay
pending in the stream, neither acknowledged nor lost, while the other shards' entries land.
Every ``retry_s`` the persister reads its pending entries again; the breaker lets one batch
through as a trial, and once the shard answers they land. Cache writes (``table=cache``)
go to the catalog shard, where the cache's L3 reads them.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import redis
from sqlalchemy.exc import SQLAlchemyError

from taskfleet.cache.l3 import purge_expired
from taskfleet.config.sharding import DEFAULT_SHARD_FAIL_MAX, DEFAULT_SHARD_RETRY_S
from taskfleet.resilience.breaker import CircuitBreaker
from taskfleet.resilience.storage import BreakerConfig, RedisStorage
from taskfleet.results.batch import write_batch
from taskfleet.results.persister import ResultPersister
from taskfleet.results.store import ensure_schema, purge_expired_results
from taskfleet.results.stream import PERSIST_GROUP, StreamEntry
from taskfleet.sharding.cluster import ShardCluster
from taskfleet.sharding.fencing import fence_demoted
from taskfleet.sharding.shardmap import ShardRouter

#: Name of a shard's write breaker (``taskfleet:breaker:`` + this in Redis).
BREAKER_PREFIX = "taskfleet-shard-write:"
#: Errors that mean a shard is down (the batch stays pending), not that a row is bad.
SHARD_DOWN_ERRORS = (SQLAlchemyError, OSError)
#: Seconds between two reads of the shard map by a running persister.
DEFAULT_MAP_REFRESH_S = 10.0
KEY_FIELD = b"key"
TABLE_FIELD = b"table"

log = logging.getLogger(__name__)


def shard_breaker(
    client: redis.Redis,
    shard: str,
    fail_max: int = DEFAULT_SHARD_FAIL_MAX,
    retry_s: float = DEFAULT_SHARD_RETRY_S,
) -> CircuitBreaker:
    """The fleet-wide write breaker of ``shard``."""
    config = BreakerConfig(fail_max=fail_max, reset_timeout=retry_s)
    return CircuitBreaker(
        f"{BREAKER_PREFIX}{shard}", RedisStorage(client), config, failure_types=SHARD_DOWN_ERRORS
    )


def shard_of_entry(router: ShardRouter, catalog: str, entry: StreamEntry) -> str:
    """The shard a stream entry lands on: its key's; the catalog for cache writes and
    malformed entries (which the catalog's batch quarantines)."""
    fields = entry[1]
    key = fields.get(KEY_FIELD)
    if key is None or fields.get(TABLE_FIELD) is not None:
        return catalog
    return router.shard_of(key.decode("utf-8", "replace"))


class ShardedPersister(ResultPersister):
    """A :class:`ResultPersister` that lands each entry on its key's shard."""

    def __init__(
        self,
        client: redis.Redis,
        cluster: ShardCluster,
        *,
        fail_max: int = DEFAULT_SHARD_FAIL_MAX,
        retry_s: float = DEFAULT_SHARD_RETRY_S,
        map_refresh_s: float = DEFAULT_MAP_REFRESH_S,
        **options: Any,
    ) -> None:
        """Consume the stream into ``cluster``; ``options`` as :class:`ResultPersister`.

        The map is read again every ``map_refresh_s`` (one query to the catalog), so a
        promotion reaches running persisters without a restart.
        """
        catalog = cluster.names[0]
        super().__init__(client, cluster.primary(catalog), **options)
        self.cluster = cluster
        self.catalog = catalog
        self.retry_s = retry_s
        self.breakers = {s: shard_breaker(client, s, fail_max, retry_s) for s in cluster.names}
        self.shard_counts: Counter[str] = Counter()
        self.held: set[bytes | str] = set()
        self._ready: set[str] = set()
        self._retry_at = float("inf")
        self.map_refresh_s = map_refresh_s
        self._refreshed = time.monotonic()
        self._pool = ThreadPoolExecutor(len(cluster.names), thread_name_prefix="tf-shard")
        #: Fences promoted shards' old primaries at each map refresh (fencing.py), on a thread
        #: of its own: an unreachable old server must not delay the writes.
        self._fencer = ThreadPoolExecutor(1, thread_name_prefix="tf-fence")
        self._fencing: Future[dict[str, str]] | None = None

    def _purge(self) -> None:
        """The catalog's cache rows as unsharded; results past their retention on every shard.

        A shard that is down is skipped (it is purged on a later round, once it is back).
        """
        purge_expired(self.engine)
        for shard in self.cluster.names:
            try:
                purge_expired_results(self.cluster.primary(shard))
            except SQLAlchemyError as exc:
                log.info("shard %s: expired results not purged this round (%s)", shard, exc)

    def _land(self, shard: str, group: Sequence[StreamEntry]) -> bool:
        breaker = self.breakers[shard]
        admission = breaker.admit()
        if not admission.allowed:
            return False
        engine = self.cluster.primary(shard)
        try:
            if shard not in self._ready:
                ensure_schema(engine)
                self._ready.add(shard)
            outcome = write_batch(engine, group, self.max_bytes, self.quarantine)
        except SHARD_DOWN_ERRORS as exc:
            breaker.record(admission, exc)
            self._ready.discard(shard)
            self.shard_counts[f"{shard}.failed_batches"] += 1
            problem = (str(exc).strip().splitlines() or ["?"])[0]
            log.warning("shard %s: write failed (%s); %d entries wait", shard, problem, len(group))
            return False
        breaker.record(admission, None)
        self.shard_counts[f"{shard}.written"] += outcome.written
        self.written += outcome.written
        self.stored_as_text += outcome.as_text
        self.quarantined += outcome.quarantined
        return True

    def _write(self, entries: Sequence[StreamEntry]) -> int:
        if not entries:
            return 0
        groups: defaultdict[str, list[StreamEntry]] = defaultdict(list)
        for entry in entries:
            groups[shard_of_entry(self.cluster.router, self.catalog, entry)].append(entry)
        futures = {s: self._pool.submit(self._land, s, g) for s, g in groups.items()}
        landed: list[bytes | str] = []
        for shard, future in futures.items():
            ids = [entry_id for entry_id, _ in groups[shard]]
            if future.result():
                landed.extend(ids)
                self.held.difference_update(ids)
            else:
                self.held.update(ids)
                self.shard_counts[f"{shard}.held"] += len(ids)
        if landed:
            pipe = self.client.pipeline(transaction=False)
            pipe.xack(self.stream, PERSIST_GROUP, *landed)
            pipe.xdel(self.stream, *landed)
            pipe.execute()
        if len(landed) < len(entries):
            self.reader.skip_pending()  # new entries first; the held ones after retry_s
            self._retry_at = min(self._retry_at, time.monotonic() + self.retry_s)
        return len(landed)

    def step(self, block_ms: int | None = None, *, full: bool = False) -> int:
        """As :meth:`ResultPersister.step`; every ``retry_s``, held entries are read again."""
        now = time.monotonic()
        if now - self._refreshed >= self.map_refresh_s:
            self._refreshed = now
            if self.cluster.refresh():
                self._ready.clear()
            if self.cluster.router.map.promoted and (self._fencing is None or self._fencing.done()):
                self._fencing = self._fencer.submit(fence_demoted, self.cluster)
        if self.held and now >= self._retry_at:
            self._retry_at = float("inf")
            self.reader.reset()
        return super().step(block_ms, full=full)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop as :meth:`ResultPersister.stop`, then end the shard threads."""
        super().stop(timeout)
        self._pool.shutdown(wait=False)
        self._fencer.shutdown(wait=False)
