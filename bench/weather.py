"""The host's "weather" while a figure is measured: Python speed and a Redis round trip.

On a shared VM both drift by tens of percent within minutes (measured here: the same loop
took 0.22 s and 0.34 s minutes apart, a loopback Redis round trip 90-160 us). Latency near
a system's capacity follows them, so W3 records them next to each run: a p99 is only
comparable with another taken in similar weather.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import redis

LOOP_ITERATIONS = 1_000_000
"""Additions in the pure-Python probe loop (~30 ms on this machine in a quiet period)."""
PINGS = 300
"""Redis round trips timed per probe."""
US = 1_000_000.0
MS = 1000.0


@dataclass(frozen=True)
class Weather:
    """One probe: how long a fixed Python loop took and what a Redis PING cost its caller."""

    loop_ms: float
    redis_rtt_us: float
    redis_rtt_cpu_us: float

    def as_dict(self) -> dict[str, float]:
        """JSON form."""
        return asdict(self)


def _loop_ms() -> float:
    started = time.perf_counter()
    total = 0
    for i in range(LOOP_ITERATIONS):
        total += i
    return (time.perf_counter() - started) * MS


def measure(redis_url: str) -> Weather:
    """Probe the host now (~0.15 s).

    Args:
        redis_url: The Redis every system uses.

    Returns:
        The probe's figures.
    """
    client = redis.Redis.from_url(redis_url)
    try:
        client.ping()  # connect outside the timing
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(PINGS):
            client.ping()
        rtt_us = (time.perf_counter() - wall) / PINGS * US
        rtt_cpu_us = (time.process_time() - cpu) / PINGS * US
    finally:
        client.close()
    return Weather(loop_ms=_loop_ms(), redis_rtt_us=rtt_us, redis_rtt_cpu_us=rtt_cpu_us)
