"""The ceiling: what Redis itself takes, via a redis-py pipelined LPUSH and ``redis-benchmark``."""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import redis

from bench.services import REDIS_DBS, flush_redis, services

CEILING_QUEUE = "bench:ceiling"
PIPELINE_CHUNK = 1000
REDIS_BENCHMARK_REQUESTS = 100_000
REDIS_BENCHMARK_TIMEOUT_S = 120.0
_RPS = re.compile(r"LPUSH:\s*([\d.]+)\s+requests per second", re.IGNORECASE)


def pipelined_lpush(n: int) -> float:
    """LPUSH ``n`` taskfleet message envelopes in pipelines of 1000; return messages/s.

    The envelopes are built (by taskfleet's own message builder) before the clock starts,
    so this is the pure Redis + redis-py cost of the bytes ``enqueue_many`` sends.

    Args:
        n: Messages.

    Returns:
        Messages per second.
    """
    from bench.common import make_payload
    from bench.systems.taskfleet import JOB_KIND, TaskfleetSystem
    from taskfleet.publishing.redis import encode

    client = TaskfleetSystem().client
    jobs = client.prepare([(JOB_KIND, make_payload(i)) for i in range(n)])
    envelopes = encode(jobs, None).envelopes
    url = services().redis_for("ceiling")
    flush_redis(url)
    conn = redis.Redis.from_url(url)
    try:
        started = time.perf_counter()
        for start in range(0, n, PIPELINE_CHUNK):
            pipe = conn.pipeline(transaction=False)
            for envelope in envelopes[start : start + PIPELINE_CHUNK]:
                pipe.lpush(CEILING_QUEUE, envelope)
            pipe.execute()
        elapsed = time.perf_counter() - started
    finally:
        conn.delete(CEILING_QUEUE)
        conn.close()
    return n / elapsed


def redis_benchmark_lpush() -> float | None:
    """``redis-benchmark -q -t lpush`` against the bench Redis; None without the binary.

    Returns:
        Requests per second, or None.
    """
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return None
    host, port = services().redis_host_port
    done = subprocess.run(
        [
            binary,
            "-h",
            host,
            "-p",
            str(port),
            "--dbnum",
            str(REDIS_DBS["ceiling"]),
            "-n",
            str(REDIS_BENCHMARK_REQUESTS),
            "-q",
            "-t",
            "lpush",
        ],
        capture_output=True,
        text=True,
        timeout=REDIS_BENCHMARK_TIMEOUT_S,
        check=False,
    )
    match = _RPS.search(done.stdout.replace("\r", "\n"))
    flush_redis(services().redis_for("ceiling"))
    return float(match.group(1)) if match else None
