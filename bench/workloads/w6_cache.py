"""W6 cache: L1/L2/L3 hit latency, and hit ratio on a Zipf(1.1) workload with L1 at 1%.

``run()`` returns a dict; with no URLs it uses the bench's own embedded stack.
"""

from __future__ import annotations

import itertools
import random
import statistics
import time
import uuid
from typing import Any

from taskfleet.cache.factory import open_cache
from taskfleet.cache.tiered import TieredCache
from taskfleet.config.cache import load_cache_settings

WORKLOAD = "W6"
DEFAULT_SAMPLES = 2000
DEFAULT_KEYS = 10_000
DEFAULT_REQUESTS = 30_000
ZIPF_S = 1.1
L1_SHARE = 0.01
SEED = 6
BENCH_STACK_DIR = ".taskfleet/bench-stack"
VALUE = {"status": "ok", "score": 0.93, "labels": ["a", "b", "c"], "n": 12345}
NS_PER_US = 1000.0


def _latency_us(cache: TieredCache, keys: list[str], samples: int) -> dict[str, float]:
    """Per-call latency of ``cache.get`` over ``samples`` calls cycling through ``keys``."""
    timings: list[int] = []
    get = cache.get
    for key in itertools.islice(itertools.cycle(keys), samples):
        start = time.perf_counter_ns()
        get(key)
        timings.append(time.perf_counter_ns() - start)
    timings.sort()
    return {
        "p50": round(timings[len(timings) // 2] / NS_PER_US, 2),
        "p99": round(timings[int(len(timings) * 0.99)] / NS_PER_US, 2),
        "mean": round(statistics.fmean(timings) / NS_PER_US, 2),
    }


def _zipf_keys(n_keys: int, n_requests: int, rng: random.Random) -> list[int]:
    weights = [1.0 / (rank**ZIPF_S) for rank in range(1, n_keys + 1)]
    cumulative = list(itertools.accumulate(weights))
    return rng.choices(range(n_keys), cum_weights=cumulative, k=n_requests)


def run(
    redis_url: str | None = None,
    database_url: str | None = None,
    *,
    samples: int = DEFAULT_SAMPLES,
    keys: int = DEFAULT_KEYS,
    requests: int = DEFAULT_REQUESTS,
) -> dict[str, Any]:
    """Measure hit latency per tier and the Zipf hit ratio; return the figures."""
    if not (redis_url and database_url):
        from taskfleet.devstack import EmbeddedStack

        urls = EmbeddedStack(BENCH_STACK_DIR).ensure_running()
        redis_url, database_url = redis_url or urls.redis_url, database_url or urls.database_url
    namespace = f"w6-{uuid.uuid4().hex[:8]}"
    settings = load_cache_settings(namespace=namespace)
    stream = f"w6-stream-{uuid.uuid4().hex[:8]}"
    hot = [f"hot:{i}" for i in range(100)]
    result: dict[str, Any] = {"workload": WORKLOAD}

    l1 = open_cache(["memory://"], settings)
    l1.set_many(dict.fromkeys(hot, VALUE))
    l2 = open_cache([redis_url], settings)
    l2.set_many(dict.fromkeys(hot, VALUE))
    l3 = open_cache([database_url], settings)
    l3.set_many(dict.fromkeys(hot, VALUE))
    try:
        for name, cache in (("l1", l1), ("l2", l2), ("l3", l3)):
            _latency_us(cache, hot, min(samples, 200))  # warm-up
            result[f"{name}_hit_us"] = _latency_us(cache, hot, samples)
    finally:
        for cache in (l1, l2, l3):
            cache.clear()
            cache.close()

    l1_entries = max(1, int(keys * L1_SHARE))
    zipf = open_cache(
        [f"memory://?max_entries={l1_entries}", redis_url, database_url],
        settings,
        stream=stream,
    )
    # The first half warms the cache (compulsory misses); the second half is measured.
    sequence = _zipf_keys(keys, 2 * requests, random.Random(SEED))
    computed = 0
    try:
        for position, index in enumerate(sequence):
            if position == requests:
                start, computed = time.perf_counter(), 0
                for tier in zipf.tiers:
                    tier.stats.reset()
            key = f"z:{index}"
            if zipf.get(key) is None:
                computed += 1
                zipf.set(key, VALUE)
        elapsed = time.perf_counter() - start
        stats = zipf.stats()
    finally:
        zipf.clear()
        assert zipf.l2 is not None
        zipf.l2.client.delete(stream)
        zipf.close()
    l1_hits, l2_hits = stats["l1"]["hits"], stats["l2"]["hits"]
    result |= {
        "zipf": {
            "keys": keys,
            "requests": requests,
            "l1_entries": l1_entries,
            "l1_hit_ratio": round(l1_hits / requests, 4),
            "combined_hit_ratio_before_l3": round((l1_hits + l2_hits) / requests, 4),
            "l3_hits": stats["l3"]["hits"],
            "computed": computed,
            "ops_per_s": round(requests / elapsed),
        }
    }
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
