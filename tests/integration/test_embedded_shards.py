"""``taskfleet shards up N --replicas``: embedded primaries with streaming replicas, real
servers under the data folder, kept with their data and ports across a stop."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import redis
from psycopg.errors import UndefinedTable
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError
from typer.testing import CliRunner

from taskfleet.cli import cli
from taskfleet.config.sharding import parse_database_urls
from taskfleet.devstack.shards import EmbeddedShards
from taskfleet.sharding.cluster import ShardCluster
from taskfleet.sharding.persister import ShardedPersister
from tests.support.waiting import wait_for

ROWS = 200
REPLAY_TIMEOUT_S = 30.0
COUNT = text("SELECT count(*) FROM taskfleet_results WHERE key LIKE :prefix")


def land(client: redis.Redis, cluster: ShardCluster, prefix: str) -> None:
    stream = f"tf-embedded-{uuid.uuid4().hex[:8]}"
    pipe = client.pipeline(transaction=False)
    for i in range(ROWS):
        meta = {"status": "SUCCESS", "task_id": f"{prefix}{i}", "name": "test.add", "result": i}
        pipe.xadd(stream, {"key": f"{prefix}{i}", "value": json.dumps(meta), "expires": 3600})
    pipe.execute()
    writer = ShardedPersister(client, cluster, stream=stream, quarantine_key=f"{stream}-q")
    try:
        assert writer.drain() == ROWS
    finally:
        client.delete(stream, f"{stream}-q")


def rows_on(cluster: ShardCluster, prefix: str, *, replica: bool = False) -> int:
    """Rows under ``prefix`` on every shard's primary (or replica: one that has not replayed
    the table's creation yet holds none of them)."""
    total = 0
    for name in cluster.names:
        engine = cluster.replica(name) if replica else cluster.primary(name)
        assert engine is not None
        with engine.connect() as conn:
            try:
                total += int(conn.execute(COUNT, {"prefix": f"{prefix}%"}).scalar() or 0)
            except ProgrammingError as exc:
                if not replica or not isinstance(exc.orig, UndefinedTable):
                    raise
    return total


@pytest.mark.slow
def test_embedded_shards_stream_to_replicas_and_keep_their_data(
    tmp_path: Path, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    shards = EmbeddedShards(tmp_path)
    try:
        servers = shards.up(2, replicas=True)
        urls = servers.database_urls
        endpoints = parse_database_urls(urls)
        assert [len(e.replicas) for e in endpoints] == [1, 1]
        cluster = ShardCluster.open(endpoints, "consistent")
        prefix = f"celery-task-meta-emb-{uuid.uuid4().hex[:6]}-"
        land(redis_client, cluster, prefix)
        assert rows_on(cluster, prefix) == ROWS
        wait_for(
            lambda: rows_on(cluster, prefix, replica=True) == ROWS,
            REPLAY_TIMEOUT_S,
            "the replicas to replay every row",
        )
        cluster.dispose()
        monkeypatch.setenv("TASKFLEET_DATA_DIR", str(tmp_path))
        stopped = CliRunner().invoke(cli, ["shards", "down"])
        assert stopped.exit_code == 0, stopped.output
        assert "primary0" in stopped.output
        assert "replica1" in stopped.output
        assert not any(s.running() for s in [*servers.primaries, *servers.replicas.values()])
        again = CliRunner().invoke(cli, ["shards", "up", "2", "--replicas"])
        assert again.exit_code == 0, again.output
        assert urls in again.output  # the same servers, on the same ports
        cluster = ShardCluster.open(endpoints, "consistent")
        assert rows_on(cluster, prefix) == ROWS  # with their rows
        cluster.dispose()
    finally:
        shards.down()
