"""Sharded durable results: logical shards over physical Postgres primaries and replicas.

A result key maps to one of ``LOGICAL_SHARDS`` logical shards by CRC-32
(:mod:`taskfleet.sharding.strategies`); the versioned shard map (:mod:`taskfleet.sharding.shardmap`,
kept in the catalog database) places logical shards on physical ones with a strategy
(:mod:`taskfleet.sharding.strategies`). :mod:`taskfleet.sharding.cluster` holds the engines
and picks replica or primary for reads, :mod:`taskfleet.sharding.persister` lands each batch
per shard behind a per-shard breaker, :mod:`taskfleet.sharding.query` runs scatter-gather
queries, and :mod:`taskfleet.sharding.cli` is ``taskfleet shards``. Unset
``TASKFLEET_DATABASE_URLS`` (the default), none of this is loaded.
"""
