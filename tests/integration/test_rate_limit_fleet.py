"""Rate limits at execution on a real fleet: two workers share one kind's limit, jobs over it
are deferred (never failed) and hold no worker slot while they wait."""

from __future__ import annotations

import bisect
import json
import os
import uuid
from collections.abc import Iterator

import pytest
import redis

from taskfleet.client import Client
from taskfleet.config import load_settings
from taskfleet.ratelimit.limiter import STATE_PREFIX, STATS_PREFIX
from taskfleet.ratelimit.testing_jobs import DIAG_LIMIT
from taskfleet.resilience.diag_keys import rate_log_key
from taskfleet.workers.profiles import cpu_profile
from tests.integration.test_dead_letters import resilience_env
from tests.support.waiting import wait_for
from tests.support.workers import Fleet

#: 400 jobs: 8 s at 50/s, within the suite's time budget. The issue's 2,000-job run (40 s)
#: is ``TASKFLEET_TEST_RATE_JOBS=2000 pytest tests/integration/test_rate_limit_fleet.py``.
JOBS = int(os.environ.get("TASKFLEET_TEST_RATE_JOBS", "400"))
RATE = DIAG_LIMIT.rate.count
#: "At most 50/s +- 10%".
TOLERANCE = 1.1
#: Windows the observed rate is checked over (seconds): the run's span, and every 5 s.
WINDOW_S = 5.0
PROCESSES_PER_WORKER = 2
SLOW_CLIENT = "slowpoke"
SLOW_JOBS = 10
SLOW_RATE = 5
PROBE_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def fleet(redis_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Two prefork workers on queues of their own; ``slowpoke`` limited to 5/s at execution."""
    env = {
        **resilience_env(redis_env, "lim"),
        "TASKFLEET_LIMITS_EXECUTION": json.dumps({SLOW_CLIENT: f"{SLOW_RATE}/s burst=1"}),
    }
    running = Fleet(env, tmp_path_factory.mktemp("lim"))
    profile = cpu_profile(load_settings(**running.settings_overrides), PROCESSES_PER_WORKER)
    try:
        running.start_all([(profile, "cpu1"), (profile, "cpu2")])
        yield running
    finally:
        running.stop()


def _times(redis_client: redis.Redis, log: str) -> list[float]:
    return sorted(float(x) for x in redis_client.lrange(rate_log_key(log), 0, -1))


def _busiest(times: list[float], window_s: float) -> int:
    """The most entries of sorted ``times`` in any window of ``window_s`` seconds."""
    return max(bisect.bisect_right(times, t + window_s) - i for i, t in enumerate(times))


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_kind_limited_to_50_per_s_across_two_workers(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    scope = "kind:diag.limited"
    redis_client.delete(f"{STATE_PREFIX}execution:{scope}", STATS_PREFIX + scope)
    log = f"t:lim:{uuid.uuid4().hex}"
    client = Client(fleet.app())
    handles = client.enqueue_many([("diag.limited", {"log": log, "n": i}) for i in range(JOBS)])
    # No process is held by a deferred job: an unlimited job (urgent, so it does not wait
    # for the first pass over the jobs) runs while most of them still wait for their slot.
    probe = client.enqueue("diag.sender", {}, priority="critical")
    probe.result(PROBE_TIMEOUT_S)
    assert redis_client.llen(rate_log_key(log)) < JOBS // 2
    wait_for(
        lambda: redis_client.llen(rate_log_key(log)) >= JOBS,
        JOBS / RATE * 2 + 60,
        f"{JOBS} limited jobs to run",
        interval=0.5,
    )
    assert [h.result(10) for h in handles] == list(range(JOBS))  # none failed, none lost
    times = _times(redis_client, log)
    assert len(times) == JOBS  # none ran twice
    observed = (JOBS - DIAG_LIMIT.burst) / (times[-1] - times[0])
    busiest = _busiest(times, WINDOW_S)
    print(f"observed {observed:.2f}/s over {times[-1] - times[0]:.1f}s; busiest 5 s: {busiest}")
    assert observed <= RATE * TOLERANCE
    assert busiest <= RATE * WINDOW_S * TOLERANCE
    counters = {k.decode(): int(v) for k, v in redis_client.hgetall(STATS_PREFIX + scope).items()}
    assert counters["started"] == JOBS
    assert counters["deferred"] >= JOBS - RATE * 10  # most waited for their slot
    client.close()


def test_a_client_limited_at_execution_keeps_its_id_through_deferrals(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    scope = f"client:{SLOW_CLIENT}"
    redis_client.delete(f"{STATE_PREFIX}execution:{scope}", STATS_PREFIX + scope)
    log = f"t:lim:{uuid.uuid4().hex}"
    client = Client(fleet.app(), client_id=SLOW_CLIENT)
    handles = client.enqueue_many([("diag.sender", {"log": log}) for _ in range(SLOW_JOBS)])
    assert [h.result(60) for h in handles] == [SLOW_CLIENT] * SLOW_JOBS
    times = _times(redis_client, log)
    assert (SLOW_JOBS - 1) / (times[-1] - times[0]) <= SLOW_RATE * TOLERANCE
    assert int(redis_client.hget(STATS_PREFIX + scope, "deferred") or 0) >= 1
    client.close()
