"""The sharded persister as a process: the worker starts it when TASKFLEET_DATABASE_URLS is set.

Same life as ``python -m taskfleet.results.persister`` (drain until SIGTERM/SIGINT or until
the parent worker is gone), with a :class:`~taskfleet.sharding.persister.ShardedPersister`
over the cluster the settings describe.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import redis

from taskfleet.config import get_settings, resolve_services
from taskfleet.config.cache import load_cache_settings
from taskfleet.config.sharding import load_sharding_settings
from taskfleet.sharding.cluster import ShardCluster
from taskfleet.sharding.persister import ShardedPersister

PARENT_CHECK_INTERVAL_S = 0.5

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
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    persister.start()
    while not stop.wait(PARENT_CHECK_INTERVAL_S):
        if parent_pid is not None and os.getppid() != parent_pid:
            log.warning("sharded persister: worker %s is gone; stopping", parent_pid)
            break
    persister.stop()
    cluster.dispose()


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s persister %(levelname)s %(message)s"
    )
    run_forever(os.getppid())
