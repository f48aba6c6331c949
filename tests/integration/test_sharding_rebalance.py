"""Resharding on real servers: add a third shard, killed (SIGKILL) twice on the way, resumed.

Three throwaway primaries for the module; the map starts on the first two, and the
rebalance adds the third. Results written between the crashes, by a persister still on the
old map, must end up exactly once too.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import text
from typer.testing import CliRunner

from taskfleet.cli import cli
from taskfleet.config.sharding import ShardEndpoints, parse_database_urls
from taskfleet.devstack.pgcluster import PgCluster, start_cluster
from taskfleet.sharding.cluster import ShardCluster
from taskfleet.sharding.persister import ShardedPersister
from taskfleet.sharding.rebalance import rebalance
from taskfleet.sharding.strategies import logical_shard
from tests.support.services import cluster_dir

#: Runs a rebalance to every configured shard and SIGKILLs itself after step argv[2].
CRASHING_REBALANCE = """
import os, signal, sys
from taskfleet.cli import cli
from taskfleet.config.sharding import parse_database_urls
from taskfleet.sharding.cluster import ShardCluster
from taskfleet.sharding.rebalance import rebalance
from taskfleet.sharding.strategies import logical_shard

cluster = ShardCluster.open(parse_database_urls(sys.argv[1]), "consistent")

def crash(move):
    if move.step == sys.argv[2]:
        os.kill(os.getpid(), signal.SIGKILL)

rebalance(cluster, cluster.names, grace_s=0, on_step=crash)
"""
SUBPROCESS_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def pg() -> Iterator[PgCluster]:
    """Three primaries, no replica."""
    with cluster_dir("pg-rebalance") as folder:
        servers = start_cluster(folder, 3)
        yield servers
        servers.stop_all()


def land(client: redis.Redis, cluster: ShardCluster, keys: list[str]) -> None:
    """Write results for ``keys`` through a sharded persister following ``cluster``'s map."""
    stream = f"tf-rebalance-{uuid.uuid4().hex[:8]}"
    pipe = client.pipeline(transaction=False)
    for key in keys:
        meta = {"status": "SUCCESS", "task_id": key, "name": "test.add", "result": 1}
        pipe.xadd(stream, {"key": key, "value": json.dumps(meta), "expires": 3600})
    pipe.execute()
    writer = ShardedPersister(client, cluster, stream=stream, quarantine_key=f"{stream}-q")
    try:
        assert writer.drain() == len(keys)
    finally:
        client.delete(stream, f"{stream}-q")


def placement_counts(cluster: ShardCluster, keys: list[str]) -> dict[str, int]:
    """ok: once, on its shard in the map; lost: nowhere; duplicated: more or elsewhere."""
    seen: dict[str, list[str]] = {}
    for shard in cluster.names:
        with cluster.primary(shard).connect() as conn:
            found = conn.execute(text("SELECT key FROM taskfleet_results")).scalars()
            for key in found:
                seen.setdefault(key, []).append(shard)
    counts = {"ok": 0, "lost": 0, "duplicated": 0}
    for key in keys:
        where = seen.get(key, [])
        bucket = "lost" if not where else "duplicated"
        counts["ok" if where == [cluster.router.shard_of(key)] else bucket] += 1
    return counts


def crash_after(urls: str, step: str) -> None:
    """Run the rebalance in a subprocess that SIGKILLs itself after ``step``."""
    done = subprocess.run(
        [sys.executable, "-c", CRASHING_REBALANCE, urls, step],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr


def test_adding_a_shard_survives_two_crashes_and_moves_about_a_third(
    pg: PgCluster, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    urls = ",".join(p.url for p in pg.primaries)
    endpoints: list[ShardEndpoints] = parse_database_urls(urls)
    before = ShardCluster.open(endpoints[:2], "consistent")  # the map: shard0, shard1
    first = [f"celery-task-meta-a{i}" for i in range(600)]
    land(redis_client, before, first)
    crash_after(urls, "copy")  # copied, not switched
    between = [f"celery-task-meta-b{i}" for i in range(200)]
    land(redis_client, before, between)  # a persister still on the old map
    crash_after(urls, "settle")  # switched, copied again, nothing deleted yet
    after = ShardCluster.open(endpoints, "consistent")
    try:
        move = rebalance(after, after.names, grace_s=0)  # resumes: deletes, done
        assert move.step == "done"
        assert after.router.map.shards == ("shard0", "shard1", "shard2")
        assert 0.2 < move.moved_fraction < 0.45  # ~1/3 of the logical shards
        counts = placement_counts(after, first + between)
        print(f"rebalance: moved {move.moved_fraction:.1%}, {counts}")
        assert counts == {"ok": 800, "lost": 0, "duplicated": 0}
        assert move.deleted == sum(after.router.shard_of(k) == "shard2" for k in first + between)
        monkeypatch.setenv("TASKFLEET_DATABASE_URLS", urls)
        again = CliRunner().invoke(cli, ["shards", "rebalance", "--grace", "0"])
        assert again.exit_code == 0, again.output
        assert "0 logical shards moved" in again.output  # nothing left to move
        assert ShardCluster.open(endpoints, "consistent").router.version == move.target.version
    finally:
        before.dispose()
        after.dispose()


def test_placing_logical_shards_by_hand_moves_exactly_them(
    pg: PgCluster, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Runs after the test above: the map is on all three shards.
    urls = ",".join(p.url for p in pg.primaries)
    endpoints = parse_database_urls(urls)
    cluster = ShardCluster.open(endpoints, "consistent")
    keys = [f"celery-task-meta-p{i}" for i in range(400)]
    try:
        land(redis_client, cluster, keys)
        placement = cluster.router.map.placement
        chosen = sorted({logical_shard(k) for k in keys[:20]} - {
            i for i, s in enumerate(placement) if s == "shard2"
        })  # fmt: skip
        monkeypatch.setenv("TASKFLEET_DATABASE_URLS", urls)
        placed = CliRunner().invoke(
            cli, ["shards", "place", "shard2", *map(str, chosen), "--grace", "0"]
        )
        assert placed.exit_code == 0, placed.output
        assert f"{len(chosen)} logical shards moved" in placed.output
        after = ShardCluster.open(endpoints, "consistent")
        new = after.router.map
        assert new.strategy == "directory"
        assert [
            i for i, (a, b) in enumerate(zip(placement, new.placement, strict=True)) if a != b
        ] == chosen
        assert all(new.placement[i] == "shard2" for i in chosen)
        assert placement_counts(after, keys) == {"ok": 400, "lost": 0, "duplicated": 0}
        # A directory stays one: the same shards again move nothing.
        assert rebalance(after, after.names, grace_s=0).moved == {}
        after.dispose()
    finally:
        cluster.dispose()
