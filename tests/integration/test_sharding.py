"""Sharded durable results on real servers: three primaries, one streaming replica.

The servers are started once for the module (tests/support/pgcluster.py) in temporary
folders on loopback ports; every test uses its own stream and its own keys, and counts only
those. Servers a test stops are started again by that test, except the last test's
(promotion), after which the old primary must stay down.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool
from typer.testing import CliRunner

from taskfleet.cli import cli
from taskfleet.config.sharding import ShardEndpoints, parse_database_urls
from taskfleet.devstack.pgcluster import PgCluster, start_cluster
from taskfleet.resilience.storage import KEY_PREFIX
from taskfleet.results.store import sqlalchemy_url
from taskfleet.sharding.admin import promote, status
from taskfleet.sharding.cluster import ShardCluster, shard_engine
from taskfleet.sharding.fencing import FENCED, UNREACHABLE, fence
from taskfleet.sharding.persister import BREAKER_PREFIX, ShardedPersister
from taskfleet.sharding.query import ResultStore
from tests.support.services import cluster_dir
from tests.support.waiting import wait_for

REPLICA_SHARD = 1
LAND_TIMEOUT_S = 60.0
PRODUCE_BATCH = 20
#: Persister pacing for tests: short waits, the breaker retried quickly.
FAST: dict[str, Any] = {
    "batch_size": 100,
    "block_ms": 20,
    "linger_s": 0.01,
    "retry_delay_s": 0.05,
    "max_retry_delay_s": 0.5,
    "fail_max": 1,
    "retry_s": 0.3,
}


@pytest.fixture(scope="module")
def pg() -> Iterator[PgCluster]:
    """Three primaries; a streaming replica of ``shard1``."""
    with cluster_dir("pg") as folder:
        servers = start_cluster(folder, 3, (REPLICA_SHARD,))
        yield servers
        servers.stop_all()


@pytest.fixture(scope="module")
def endpoints(pg: PgCluster) -> list[ShardEndpoints]:
    """The shards, as ``TASKFLEET_DATABASE_URLS`` gives them."""
    return parse_database_urls(pg.database_urls)


@pytest.fixture(scope="module")
def engines(endpoints: list[ShardEndpoints]) -> Iterator[dict[str, Engine]]:
    """A direct engine on every primary and on the replica, by name."""
    made = {e.name: shard_engine(e.primary) for e in endpoints}
    made["replica"] = shard_engine(endpoints[REPLICA_SHARD].replicas[0])
    yield made
    for engine in made.values():
        engine.dispose()


@pytest.fixture
def cluster(endpoints: list[ShardEndpoints]) -> Iterator[ShardCluster]:
    """The cluster as a process opens it (reading the map)."""
    opened = ShardCluster.open(endpoints, "consistent", max_lag_s=5.0)
    yield opened
    opened.dispose()


@pytest.fixture
def stream(redis_client: redis.Redis, endpoints: list[ShardEndpoints]) -> Iterator[str]:
    """A private stream; the shards' write breakers start closed."""
    name = f"tf-shard-stream-{uuid.uuid4().hex[:8]}"
    breakers = [f"{KEY_PREFIX}{BREAKER_PREFIX}{e.name}" for e in endpoints]
    redis_client.delete(*breakers, *(b + ":w" for b in breakers))
    yield name
    redis_client.delete(name, f"{name}-q", f"{name}-q:counts")


def persister(client: redis.Redis, cluster: ShardCluster, stream: str) -> ShardedPersister:
    """A sharded persister on ``stream`` with the test pacing."""
    return ShardedPersister(client, cluster, stream=stream, quarantine_key=f"{stream}-q", **FAST)


def produce(client: redis.Redis, stream: str, keys: list[str], kind: str = "test.add") -> None:
    """Append results for ``keys`` as the backend's script does (key, value, expires)."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        meta = {"status": "SUCCESS", "task_id": key, "name": kind, "result": 1}
        pipe.xadd(stream, {"key": key, "value": json.dumps(meta), "expires": 3600})
    pipe.execute()


def keys_on(engine: Engine, prefix: str) -> list[str]:
    """Keys starting with ``prefix`` in ``engine``'s results table."""
    with engine.connect() as conn:
        found = conn.execute(
            text("SELECT key FROM taskfleet_results WHERE key LIKE :p"), {"p": prefix + "%"}
        )
        return [row.key for row in found]


def tally(
    cluster: ShardCluster, prefix: str, keys: list[str], down: str | None = None
) -> dict[str, int]:
    """ok: once, on its own shard; lost: nowhere; duplicated: more than once or elsewhere.

    ``down``: a shard not looked at (its keys then count as lost).
    """
    seen: dict[str, list[str]] = {}
    for shard in (s for s in cluster.names if s != down):
        for key in keys_on(cluster.primary(shard), prefix):
            seen.setdefault(key, []).append(shard)
    counts = {"ok": 0, "lost": 0, "duplicated": 0}
    for key in keys:
        where = seen.get(key, [])
        if not where:
            counts["lost"] += 1
        elif where == [cluster.router.shard_of(key)]:
            counts["ok"] += 1
        else:
            counts["duplicated"] += 1
    return counts


def new_keys(count: int) -> tuple[str, list[str]]:
    """A fresh prefix and ``count`` result keys under it."""
    prefix = f"celery-task-meta-{uuid.uuid4().hex[:8]}-"
    return prefix, [f"{prefix}{i}" for i in range(count)]


def test_the_persister_lands_each_row_on_its_shard(
    redis_client: redis.Redis, cluster: ShardCluster, engines: dict[str, Engine], stream: str
) -> None:
    prefix, keys = new_keys(300)
    produce(redis_client, stream, keys)
    writer = persister(redis_client, cluster, stream)
    assert writer.drain() == len(keys)
    assert tally(cluster, prefix, keys) == {"ok": 300, "lost": 0, "duplicated": 0}
    per_shard = {s: len(keys_on(engines[s], prefix)) for s in cluster.names}
    assert all(per_shard.values()), per_shard  # 300 keys reach every shard
    assert redis_client.xlen(stream) == 0  # acknowledged and deleted


def test_a_replica_serves_reads_and_catches_up(
    redis_client: redis.Redis, cluster: ShardCluster, engines: dict[str, Engine], stream: str
) -> None:
    prefix, keys = new_keys(200)
    mine = [k for k in keys if cluster.router.shard_of(k) == f"shard{REPLICA_SHARD}"]
    produce(redis_client, stream, keys)
    persister(redis_client, cluster, stream).drain()
    wait_for(
        lambda: len(keys_on(engines["replica"], prefix)) == len(mine),
        LAND_TIMEOUT_S,
        "the replica to replay the rows",
    )
    wait_for(lambda: cluster.replica_lag(f"shard{REPLICA_SHARD}", cached=False) == 0, 30, "lag 0")
    before = cluster.counters.copy()
    assert cluster.fetch_result(mine[0]) == {
        "status": "SUCCESS", "task_id": mine[0], "name": "test.add", "result": 1,
    }  # fmt: skip
    assert cluster.counters["replica_reads"] == before["replica_reads"] + 1
    assert cluster.fetch_result(mine[0], fresh=True) is not None  # must see its own write
    assert cluster.counters["primary_reads"] == before["primary_reads"] + 1


def test_a_primary_stopped_under_live_traffic_loses_nothing(
    redis_client: redis.Redis,
    cluster: ShardCluster,
    engines: dict[str, Engine],
    pg: PgCluster,
    stream: str,
) -> None:
    down = f"shard{REPLICA_SHARD}"
    prefix, keys = new_keys(2000)
    produced: list[str] = []
    stop = threading.Event()
    slow = threading.Event()

    def producer() -> None:
        for start in range(0, len(keys), PRODUCE_BATCH):
            if stop.is_set():
                return
            batch = keys[start : start + PRODUCE_BATCH]
            produce(redis_client, stream, batch)
            produced.extend(batch)
            slow.wait(0.01)  # pacing only: every assertion below waits on a condition

    writer = persister(redis_client, cluster, stream)
    writer.start()
    thread = threading.Thread(target=producer)
    thread.start()
    try:
        wait_for(lambda: len(produced) >= 200, LAND_TIMEOUT_S, "traffic")
        early = [k for k in produced if cluster.router.shard_of(k) == down]
        wait_for(lambda: keys_on(engines["replica"], early[0]), LAND_TIMEOUT_S, "replicated")
        pg.primaries[REPLICA_SHARD].stop("immediate")
        at_stop = len(produced)
        wait_for(lambda: writer.held, LAND_TIMEOUT_S, "entries held for the stopped shard")
        others = [k for k in keys[at_stop : at_stop + 400] if cluster.router.shard_of(k) != down]
        wait_for(
            lambda: (
                len(produced) >= at_stop + 400
                and tally(cluster, prefix, others, down)["ok"] == len(others)
            ),
            LAND_TIMEOUT_S,
            "the other shards' rows to land while the shard is down",
        )
        pending = redis_client.xpending(stream, "taskfleet-persisters")["pending"]
        assert pending >= 1  # held, not acknowledged
        assert cluster.fetch_result(early[0], fresh=True) is not None  # read falls over
        assert cluster.counters["read_failovers"] >= 1
        assert writer.shard_counts[f"{down}.held"] > 0
        stop.set()
        thread.join()
        pg.primaries[REPLICA_SHARD].start()
        wait_for(
            lambda: tally(cluster, prefix, produced)["ok"] == len(produced),
            LAND_TIMEOUT_S,
            "every row to land after the shard returned",
        )
    finally:
        stop.set()
        thread.join()
        if not pg.primaries[REPLICA_SHARD].running():
            pg.primaries[REPLICA_SHARD].start()
        writer.stop()
    counts = tally(cluster, prefix, produced)
    print(f"primary stopped under traffic: {len(produced)} produced, {counts}")
    assert counts == {"ok": len(produced), "lost": 0, "duplicated": 0}
    assert not writer.held
    assert redis_client.xlen(stream) == 0


def test_scatter_gather_is_partial_while_a_shard_is_down(
    redis_client: redis.Redis, cluster: ShardCluster, pg: PgCluster, stream: str
) -> None:
    prefix, keys = new_keys(150)
    kind = f"test.kind.{prefix[-10:-1]}"
    produce(redis_client, stream, keys, kind=kind)
    persister(redis_client, cluster, stream).drain()
    store = ResultStore(cluster, deadline_s=10.0)
    try:
        wait_for(  # shard1 is read on its replica, once it has replayed the rows
            lambda: store.count(kind=kind, state="SUCCESS").value == 150, 30, "all 150 counted"
        )
        assert not store.count(kind=kind, state="SUCCESS").partial
        pg.primaries[2].stop("immediate")
        try:
            partial = store.count(kind=kind, state="SUCCESS")
            rows = store.query(kind=kind, limit=1000)
        finally:
            pg.primaries[2].start()
        on_two = sum(cluster.router.shard_of(k) == "shard2" for k in keys)
        assert partial.partial
        assert set(partial.missing) == {"shard2"}
        assert partial.value == 150 - on_two
        assert rows.partial
        assert len(rows.value) == 150 - on_two
        assert {r["key"] for r in rows.value} == {
            k for k in keys if cluster.router.shard_of(k) != "shard2"
        }
        assert store.count(kind=kind, state="FAILURE").value == 0
        assert store.oldest(kind=kind, state="SUCCESS").value["key"] in keys
        assert store.oldest(kind=kind).value is None  # no pending row of this kind
    finally:
        store.close()


def test_the_cli_counts_queries_and_shows_the_shards(
    redis_client: redis.Redis,
    cluster: ShardCluster,
    pg: PgCluster,
    stream: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prefix, keys = new_keys(40)
    kind = f"test.cli.{prefix[-10:-1]}"
    produce(redis_client, stream, keys, kind=kind)
    persister(redis_client, cluster, stream).drain()
    monkeypatch.setenv("TASKFLEET_DATABASE_URLS", pg.database_urls)
    runner = CliRunner()
    wait_for(
        lambda: (
            json.loads(runner.invoke(cli, ["results", "count", "--kind", kind, "--json"]).output)[
                "result"
            ]
            == len(keys)
        ),
        30,
        "the CLI to count every row (the replica replays shard1's)",
    )
    found = runner.invoke(cli, ["results", "query", "--kind", kind, "--since", "600", "--json"])
    assert found.exit_code == 0, found.output
    assert {r["key"] for r in json.loads(found.output)["result"]} == set(keys)
    shown = runner.invoke(cli, ["shards", "status", "--json"])
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.output)
    assert sum(s["logical_shards"] for s in report["shards"].values()) == 256
    assert {s["breaker"] for s in report["shards"].values()} == {"closed"}


def test_promotion_makes_the_replica_the_primary_in_the_map(
    redis_client: redis.Redis,
    cluster: ShardCluster,
    endpoints: list[ShardEndpoints],
    pg: PgCluster,
    stream: str,
) -> None:
    shard = f"shard{REPLICA_SHARD}"
    version = cluster.router.version
    running = ShardedPersister(  # started before the promotion, on the old map
        redis_client, cluster, stream=stream, quarantine_key=f"{stream}-q",
        **FAST | {"map_refresh_s": 0.2},
    )  # fmt: skip
    running.start()
    admin = ShardCluster.open(endpoints, "consistent")  # the operator's process
    try:
        pg.primaries[REPLICA_SHARD].stop("immediate")  # stays down: the replica takes over
        new_map = promote(admin, shard)
        assert new_map.version == version + 1
        assert shard in new_map.promoted
        assert admin.primary_url(shard) == endpoints[REPLICA_SHARD].replicas[0]
        prefix, keys = new_keys(100)
        produce(redis_client, stream, keys)
        wait_for(
            lambda: tally(admin, prefix, keys)["ok"] == len(keys),
            LAND_TIMEOUT_S,
            "the running persister to follow the new map and land every row",
        )
        assert cluster.router.version == new_map.version
        with admin.primary(shard).connect() as conn:
            assert conn.execute(text("SELECT pg_is_in_recovery()")).scalar() is False
        report: dict[str, Any] = status(admin, redis_client)
        assert report["shards"][shard]["promoted"] is True
        assert report["shards"][shard]["replica_lag_s"] is None
        assert report["shards"]["shard0"]["rows"] > 0
        assert report["shards"][shard]["old_primary"] == UNREACHABLE  # still down
        # The old primary comes back: the running persister fences it at its next map
        # refresh, so a writer still on the old map could not write there.
        old = pg.primaries[REPLICA_SHARD]
        old.start()
        old_engine = create_engine(sqlalchemy_url(old.url), poolclass=NullPool)

        def read_only() -> bool:
            with old_engine.connect() as conn:
                return conn.execute(text("SHOW default_transaction_read_only")).scalar() == "on"

        wait_for(read_only, LAND_TIMEOUT_S, "the demoted primary to be fenced")
        with pytest.raises(DBAPIError, match="read-only transaction"), old_engine.begin() as conn:
            conn.execute(text("CREATE TABLE fenced_write_probe (x int)"))
        assert fence(admin, shard) == FENCED
        old_engine.dispose()
    finally:
        running.stop()
        admin.dispose()
