"""S1: sharded durable results (issue 21): the per-result routing cost, persister throughput.

* **routing**: ``ShardRouter.shard_of`` per key (CRC-32 + two lookups), and the persister's
  split of a batch by shard per entry, in microseconds (medians of ``ROUNDS`` rounds);
* **persister throughput**: ``N`` results put in a private stream, drained by one
  :class:`~taskfleet.sharding.persister.ShardedPersister` into 1, 2 and 4 throwaway
  primaries (``taskfleet.devstack.pgcluster``, loopback), rows/s; and the unsharded
  :class:`~taskfleet.results.persister.ResultPersister` into the first one, for reference.

All servers share this machine's cores with Redis and the persister, so more shards add
parallel commits but no CPU: on 2 cores the ratios show the machine's limit, not the design's.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import text

from bench.report import NOT_AVAILABLE, Table
from bench.services import services
from bench.workloads.base import Options, failure
from taskfleet.config.sharding import parse_database_urls
from taskfleet.devstack.pgcluster import PgCluster, add_replica, start_cluster
from taskfleet.results.persister import ResultPersister
from taskfleet.results.store import ensure_schema
from taskfleet.sharding.cluster import ShardCluster, shard_engine
from taskfleet.sharding.persister import ShardedPersister, shard_of_entry
from taskfleet.sharding.query import ResultStore
from taskfleet.sharding.rebalance import rebalance
from taskfleet.sharding.shardmap import initial_map

ROUNDS = 5
KEYS, QUICK_KEYS = 200_000, 20_000
ROWS, QUICK_ROWS = 20_000, 3_000
SHARD_COUNTS = (1, 2, 4)
BATCH = 500
TARGET_US = 5.0
#: Cross-shard queries timed (count, then the newest 100 rows) after the rebalance.
QUERY_ROUNDS = 20


def _routing_us(n: int) -> dict[str, float]:
    cluster = ShardCluster(
        parse_database_urls(",".join(f"postgresql://h{i}/db" for i in range(4))),
        initial_map([f"shard{i}" for i in range(4)], "consistent"),
    )
    keys = [f"celery-task-meta-{uuid.uuid4()}" for _ in range(n)]
    entries = [(b"0-1", {b"key": k.encode(), b"value": b"{}"}) for k in keys]
    shard_of = cluster.router.shard_of

    def per_key(body: Any) -> float:
        start = time.perf_counter()
        body()
        return (time.perf_counter() - start) / n * 1e6

    def route() -> None:
        for key in keys:
            shard_of(key)

    router = cluster.router

    def split() -> None:
        for entry in entries:
            shard_of_entry(router, "shard0", entry)

    return {
        "route_us": round(statistics.median(per_key(route) for _ in range(ROUNDS)), 3),
        "split_us": round(statistics.median(per_key(split) for _ in range(ROUNDS)), 3),
    }


def _fill(client: redis.Redis, stream: str, rows: int) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(rows):
        key = f"celery-task-meta-{uuid.uuid4()}"
        meta = {"status": "SUCCESS", "task_id": key, "name": "bench.add", "result": i}
        pipe.xadd(stream, {"key": key, "value": json.dumps(meta), "expires": 3600})
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()


def _truncate(servers: PgCluster) -> None:
    for server in servers.primaries:
        engine = shard_engine(server.url, 1)
        ensure_schema(engine)
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE taskfleet_results"))
        engine.dispose()


def _drain_rate(
    client: redis.Redis, servers: PgCluster, shards: int, rows: int, batch: int = BATCH
) -> tuple[float, float]:
    """Rows/s of one drain, and the persister's own CPU µs per row."""
    _truncate(servers)
    stream = f"bench-shard-{uuid.uuid4().hex[:8]}"
    urls = ",".join(p.url for p in servers.primaries[: max(shards, 1)])
    endpoints = parse_database_urls(urls)
    cluster = ShardCluster(endpoints, initial_map([e.name for e in endpoints], "consistent"))
    try:
        if shards == 0:  # unsharded reference
            engine = shard_engine(servers.primaries[0].url, 4)
            writer: ResultPersister = ResultPersister(
                client, engine, stream=stream, batch_size=BATCH
            )
        else:
            writer = ShardedPersister(client, cluster, stream=stream, batch_size=batch)
        _fill(client, stream, BATCH * 2)
        writer.drain()  # warm-up: schema checked, connections opened
        _fill(client, stream, rows)
        start, cpu = time.perf_counter(), time.process_time()
        written = writer.drain()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        writer.stop()
        if written != rows:
            raise RuntimeError(f"{written} of {rows} rows written")
        return rows / elapsed, cpu / rows * 1e6
    finally:
        cluster.dispose()
        client.delete(stream, f"{stream}:q")


def _rebalance_and_query(client: redis.Redis, servers: PgCluster, rows: int) -> dict[str, Any]:
    """3 -> 4 shards: moved fraction and rows/s; then cross-shard count and query latency."""
    _truncate(servers)
    endpoints = parse_database_urls(",".join(p.url for p in servers.primaries))
    three = ShardCluster.open(endpoints[:3], "consistent")
    stream = f"bench-shard-{uuid.uuid4().hex[:8]}"
    _fill(client, stream, rows)
    ShardedPersister(client, three, stream=stream, batch_size=BATCH).drain()
    client.delete(stream, f"{stream}:q")
    four = ShardCluster.open(endpoints, "consistent")
    store = ResultStore(four)
    try:
        start = time.perf_counter()
        move = rebalance(four, four.names, grace_s=0)
        elapsed = time.perf_counter() - start
        timings: dict[str, list[float]] = {"count": [], "query": []}
        for _ in range(QUERY_ROUNDS):
            for name, ask in (("count", store.count), ("query", store.query)):
                begin = time.perf_counter()
                ask(kind="bench.add", state="SUCCESS")
                timings[name].append((time.perf_counter() - begin) * 1e3)
        return {
            "moved_fraction": round(move.moved_fraction, 3),
            "moved_rows": move.deleted,
            "rebalance_rows_per_s": round(move.deleted / elapsed),
            "count_ms": round(statistics.median(timings["count"]), 2),
            "query_ms": round(statistics.median(timings["query"]), 2),
        }
    finally:
        store.close()
        three.dispose()
        four.dispose()


def run(quick: bool = False, redis_url: str | None = None) -> dict[str, Any]:
    """Routing cost (µs) and drain rates (rows/s) by shard count (0: unsharded)."""
    out: dict[str, Any] = _routing_us(QUICK_KEYS if quick else KEYS)
    rows = QUICK_ROWS if quick else ROWS
    base = Path(tempfile.mkdtemp(prefix="tf-bench-shards-"))
    servers = start_cluster(base, max(SHARD_COUNTS))
    client = redis.Redis.from_url(redis_url or services().redis_url)
    try:
        out["rows"] = rows
        out["rows_per_s"], out["cpu_us_per_row"] = {}, {}
        for shards in (0, *SHARD_COUNTS):
            for label, batch in ((str(shards), BATCH), (f"{shards}x", BATCH * max(shards, 1))):
                if label.endswith("x") and shards <= 1:
                    continue
                rate, cpu = _drain_rate(client, servers, shards, rows, batch)
                out["rows_per_s"][label], out["cpu_us_per_row"][label] = round(rate), round(cpu, 1)
        out |= _rebalance_and_query(client, servers, rows)
        for index in range(max(SHARD_COUNTS)):  # then every primary streams to a replica
            add_replica(servers, base, index)
        for shards in SHARD_COUNTS:
            rate, cpu = _drain_rate(client, servers, shards, rows, BATCH * shards)
            label = f"{shards}r"
            out["rows_per_s"][label], out["cpu_us_per_row"][label] = round(rate), round(cpu, 1)
    finally:
        servers.stop_all()
        shutil.rmtree(base, ignore_errors=True)
    return out


def table(options: Options) -> Table:
    """S1: routing cost per result and persister throughput by shard count."""
    result = Table("S1", "sharded durable results", ["figure", "value", "target", "note"])
    try:
        runs = [run(options.quick) for _ in range(options.runs)]
    except Exception as exc:
        result.rows.append(["S1", failure("S1", exc), NOT_AVAILABLE, ""])
        return result
    route = statistics.median(r["route_us"] for r in runs)
    split = statistics.median(r["split_us"] for r in runs)
    result.rows += [
        ["routing: key -> physical shard", f"{route:.2f} µs", f"< {TARGET_US:.0f} µs", ""],
        ["persister split of a batch, per entry", f"{split:.2f} µs", f"< {TARGET_US:.0f} µs", ""],
    ]
    one = statistics.median(r["rows_per_s"]["1"] for r in runs)
    for shards in runs[0]["rows_per_s"]:
        rate = statistics.median(r["rows_per_s"][shards] for r in runs)
        cpu = statistics.median(r["cpu_us_per_row"][shards] for r in runs)
        count = shards.rstrip("xr")
        label = "unsharded ResultPersister" if shards == "0" else f"{count} shard(s)"
        if shards.endswith(("x", "r")):
            label += f", batch {BATCH} per shard"
        if shards.endswith("r"):
            label += ", each primary streaming to a replica"
        result.rows.append([f"persister drain, {label}", f"{rate:,.0f} rows/s", "",
                            f"x{rate / one:.2f} of 1 shard; persister CPU {cpu} µs/row"])  # fmt: skip
    for name, key, unit in (
        ("rebalance 3 -> 4 shards: logical shards moved", "moved_fraction", ""),
        ("rebalance 3 -> 4 shards: rows moved", "moved_rows", ""),
        (
            "rebalance 3 -> 4 shards: rows/s (copy, switch, re-copy, delete)",
            "rebalance_rows_per_s",
            "",
        ),
        ("cross-shard count, 4 shards (kind + state)", "count_ms", " ms"),
        ("cross-shard query, newest 100 rows, 4 shards", "query_ms", " ms"),
    ):
        value = statistics.median(r[key] for r in runs)
        result.rows.append([name, f"{value:,}{unit}", "", ""])
    result.notes.append(
        f"{runs[0]['rows']:,} results per drain, batches of {BATCH}, one persister; every "
        "server on this machine (loopback), so extra shards add parallel commits, not cores."
    )
    return result


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
