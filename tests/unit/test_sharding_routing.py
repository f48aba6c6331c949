"""Sharding without servers: stable routing, placement strategies, settings, the map."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from taskfleet.config import ConfigError
from taskfleet.config.sharding import load_sharding_settings, parse_database_urls
from taskfleet.sharding.cluster import ShardCluster
from taskfleet.sharding.shardmap import ShardRouter, initial_map
from taskfleet.sharding.strategies import (
    LOGICAL_SHARDS,
    STRATEGIES,
    ConsistentHash,
    Directory,
    HashMod,
    logical_shard,
)

SHARDS = ["shard0", "shard1", "shard2"]
KEYS = [f"celery-task-meta-{i:08x}" for i in range(2000)]
#: Run in a fresh interpreter with another hash seed: prints each key's shard.
PLACE_IN_SUBPROCESS = """
import json, sys
from taskfleet.sharding.shardmap import ShardRouter, initial_map
keys = json.load(sys.stdin)
router = ShardRouter(initial_map(["shard0", "shard1", "shard2"], "consistent"))
print(json.dumps([router.shard_of(k) for k in keys]))
"""


def moved(before: tuple[str, ...], after: tuple[str, ...]) -> float:
    """The fraction of logical shards whose physical shard changed."""
    return sum(a != b for a, b in zip(before, after, strict=True)) / len(before)


def test_routing_is_the_same_in_another_process() -> None:
    router = ShardRouter(initial_map(SHARDS, "consistent"))
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    done = subprocess.run(
        [sys.executable, "-c", PLACE_IN_SUBPROCESS],
        input=json.dumps(KEYS),
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    assert json.loads(done.stdout) == [router.shard_of(k) for k in KEYS]


def test_the_logical_shard_is_a_fixed_crc32() -> None:
    assert logical_shard("celery-task-meta-abc") == 0x3E0ED8FB % LOGICAL_SHARDS
    router = ShardRouter(initial_map(SHARDS, "hash-mod"))
    assert all(router.shard_of(k) == SHARDS[logical_shard(k) % 3] for k in KEYS)
    assert {logical_shard(k) for k in KEYS} == set(range(LOGICAL_SHARDS))


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_places_every_logical_shard(name: str) -> None:
    placement = STRATEGIES[name].place(SHARDS)
    assert len(placement) == LOGICAL_SHARDS
    counts = [placement.count(s) for s in SHARDS]
    assert min(counts) >= LOGICAL_SHARDS // 3 * 0.7, counts  # roughly even


def test_consistent_hashing_moves_about_one_nth_and_hash_mod_most() -> None:
    four = [*SHARDS, "shard3"]
    ring = moved(ConsistentHash().place(SHARDS), ConsistentHash().place(four))
    assert 0.1 < ring < 0.4  # ~1/4
    assert moved(HashMod().place(SHARDS), HashMod().place(four)) > 0.6


def test_a_directory_names_only_known_shards() -> None:
    assert Directory({0: "shard2"}).place(SHARDS)[0] == "shard2"
    with pytest.raises(ValueError, match="unknown"):
        Directory({0: "elsewhere"}).place(SHARDS)


def test_database_urls_with_replicas() -> None:
    shards = parse_database_urls("postgresql://a/db|postgresql://a2/db, postgres://b/db")
    assert [(s.name, s.primary, s.replicas) for s in shards] == [
        ("shard0", "postgresql://a/db", ("postgresql://a2/db",)),
        ("shard1", "postgres://b/db", ()),
    ]
    with pytest.raises(ConfigError, match="TASKFLEET_DATABASE_URLS"):
        load_sharding_settings(database_urls="postgresql://a/db,mysql://b/db")


def test_unsharded_is_the_default_and_opens_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKFLEET_DATABASE_URLS", raising=False)
    settings = load_sharding_settings()
    assert settings.shards == []
    assert ShardCluster.from_settings(settings) is None


def test_promotion_is_a_new_map_version() -> None:
    first = initial_map(SHARDS, "range")
    second = first.with_promoted("shard1")
    assert (second.version, second.promoted, second.placement) == (
        2,
        frozenset({"shard1"}),
        first.placement,
    )
