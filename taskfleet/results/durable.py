"""Reading a result back from Postgres for the backend: the one database, or the key's shard.

Unsharded (the default), one small engine on ``TASKFLEET_DATABASE_URL``. With
``TASKFLEET_DATABASE_URLS`` set, the shard cluster (:mod:`taskfleet.sharding.cluster`): the
key's shard, its replica when fresh enough, and the replica when the primary is down.
Both are opened on the first read, so a process that never reads Postgres opens neither.
"""

from __future__ import annotations

from typing import Any

from taskfleet.results import store

#: The app settings (``taskfleet.app_config``) naming the database(s).
DATABASE_URL_SETTING = "taskfleet_database_url"
DATABASE_URLS_SETTING = "taskfleet_database_urls"
#: Connections of the backend's read engine (reads are rare: Redis answers first).
READ_POOL_SIZE = 2


class DurableReader:
    """``fetch(key)``: the stored meta, from wherever the configuration puts it."""

    def __init__(self, database_url: str | None, database_urls: str | None = None) -> None:
        self.database_url = database_url
        self.database_urls = database_urls
        self._engine: Any = None
        self._cluster: Any = None

    @classmethod
    def from_conf(cls, conf: Any) -> DurableReader:
        """The reader a Celery app's configuration asks for."""
        return cls(conf.get(DATABASE_URL_SETTING), conf.get(DATABASE_URLS_SETTING))

    def fetch(self, key: str) -> dict[str, Any] | None:
        """The stored meta of ``key``, or None.

        Raises:
            SQLAlchemyError: the database (or the shard and its replica) did not answer.
        """
        if self.database_urls:
            if self._cluster is None:
                from taskfleet.config.sharding import load_sharding_settings
                from taskfleet.sharding.cluster import ShardCluster

                settings = load_sharding_settings(database_urls=self.database_urls)
                self._cluster = ShardCluster.from_settings(settings)
            found: dict[str, Any] | None = self._cluster.fetch_result(key)
            return found
        if self._engine is None:
            self._engine = store.make_engine(str(self.database_url), pool_size=READ_POOL_SIZE)
        return store.fetch_result(self._engine, key)  # looked up at call time (tests patch it)
