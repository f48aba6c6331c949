"""The sharded persister as a process: the worker starts it when TASKFLEET_DATABASE_URLS is set.

Same life as ``python -m taskfleet.results.persister`` (drain until SIGTERM/SIGINT or until
the parent worker is gone), with a :class:`~taskfleet.sharding.persister.ShardedPersister`
over the cluster the settings describe.
"""

from __future__ import annotations

import logging
import os

import redis

from taskfleet.config import get_settings, resolve_services
from taskfleet.config.cache import load_cache_settings
from taskfleet.config.sharding import load_sharding_settings
from taskfleet.results.persister import serve
from taskfleet.sharding.cluster import ShardCluster
from taskfleet.sharding.persister import ShardedPersister

log = logging.getLogger(__name__)


def run_forever(parent_pid: int | None = None) -> None:
    """Drain the stream into the shards until told to stop.

    Raises:
        RuntimeError: TASKFLEET_DATABASE_URLS is not set.
    """
    sharding = load_sharding_settings()
    cluster = ShardCluster.from_settings(sharding)
    if cluster is None:
        raise RuntimeError("the sharded persister needs TASKFLEET_DATABASE_URLS")
    settings = get_settings()
    cache_settings = load_cache_settings()
    client = redis.Redis.from_url(resolve_services(settings).redis_url)
    persister = ShardedPersister(
        client,
        cluster,
        fail_max=sharding.shard_fail_max,
        retry_s=sharding.shard_retry,
        max_bytes=cache_settings.persist_max_bytes,
        stream_maxlen=cache_settings.persist_stream_maxlen,
        max_retry_delay_s=cache_settings.persist_max_retry_delay,
    )
    serve(persister, parent_pid, "sharded persister")
    cluster.dispose()


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s persister %(levelname)s %(message)s"
    )
    run_forever(os.getppid())
