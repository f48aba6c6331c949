"""Admission leases across processes: a failure in one process ends another's lease at once.

Process B (a child interpreter) admits calls from a long lease; this test process (A) then
fails a call through the same breaker, which opens it. B must stop admitting long before its
lease would expire: only the pub/sub event can tell it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
import redis

from taskfleet.resilience.breaker import CircuitBreaker
from taskfleet.resilience.storage import BreakerConfig, storage_from_url
from tests.support.services import REPO
from tests.support.waiting import wait_for

CONFIG = BreakerConfig(fail_max=3, reset_timeout=60)
#: A's thresholds (each caller's ride with its own calls): its one failure opens the breaker.
#: With ``fail_max=3`` A would need three failures in a row while B, every 5 ms, records
#: successes that reset the count: a race of A's speed against B's.
A_CONFIG = BreakerConfig(fail_max=1, reset_timeout=60)
#: B's lease: far longer than the test may take.
B_LEASE_S = 120.0
#: How long B may keep admitting after the breaker opened (pub/sub plus B's 5 ms loop).
STOP_DEADLINE_S = 5.0
#: B runs at most this long, whatever happens to the test.
B_RUN_S = 60.0

B_SCRIPT = """
import json, sys, time
from taskfleet.resilience.breaker import CircuitBreaker
from taskfleet.resilience.runtime import EventFeed
from taskfleet.resilience.storage import BreakerConfig, storage_from_url

url, name, lease_s, report, run_s = sys.argv[1:6]
storage = storage_from_url(url)
feed = EventFeed(storage.client)
config = BreakerConfig(fail_max=3, reset_timeout=60)
breaker = CircuitBreaker(name, storage, config, lease_s=float(lease_s), feed=feed)
marked = False
deadline = time.monotonic() + float(run_s)
while time.monotonic() < deadline:
    admission = breaker.admit()
    if not admission.allowed:
        break
    breaker.record(admission, None)
    if not marked and breaker.counters["leased"]:
        storage.client.set(report + ":leased", 1)
        marked = True
    time.sleep(0.005)
storage.client.set(report + ":stopped", json.dumps(dict(breaker.counters)))
"""


@pytest.fixture
def names() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"lease-fleet-{tag}", f"t:lease-fleet:{tag}"


@pytest.fixture
def process_b(
    services: dict[str, str], names: tuple[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    name, report = names
    args = [services["TASKFLEET_REDIS_URL"], name, str(B_LEASE_S), report, str(B_RUN_S)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", B_SCRIPT, *args], env=env, cwd=REPO)
    yield proc
    proc.kill()
    proc.wait(10)


def test_failure_in_one_process_stops_another_before_its_lease_expires(
    services: dict[str, str],
    redis_client: redis.Redis,
    names: tuple[str, str],
    process_b: subprocess.Popen[bytes],
) -> None:
    name, report = names
    wait_for(lambda: redis_client.get(f"{report}:leased"), 30, "B to admit from its lease")
    a = CircuitBreaker(name, storage_from_url(services["TASKFLEET_REDIS_URL"]), A_CONFIG)
    admission = a.admit()
    assert admission.allowed
    a.record(admission, ConnectionError("dependency down"))
    a_calls = 1
    assert a.snapshot()["state"] == "open"
    # Within STOP_DEADLINE_S, far inside B's lease: the event ended it, not its expiry.
    stopped = wait_for(
        lambda: redis_client.get(f"{report}:stopped"), STOP_DEADLINE_S, "B to stop admitting"
    )
    assert process_b.wait(10) == 0
    counters = json.loads(stopped or "{}")
    assert counters["leased"] >= 1
    assert counters["rejected"] == 1  # refused by Redis (open), once B asked again
    snapshot = a.snapshot()
    assert snapshot["failures"] == a_calls  # B made no failing call
    assert snapshot["allowed"] == counters["allowed"] + a_calls  # lease admits counted
