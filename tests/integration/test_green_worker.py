"""A gevent worker whose greenlets all finish at once: every ack lands, nothing is stranded.

kombu caps a Redis channel's connection pool at 10 and raises ``MaxConnectionsError`` past
it (celery/celery#1350). On a gevent pool, many greenlets ack at the same moment; an ack that
raises makes Celery drop the broker connection and restart its consumer, and the jobs it had
reserved stay in the ``unacked`` hash until the visibility timeout (an hour): the demo's
intermittent hang. taskfleet sizes every Redis pool of a green worker to its greenlet ceiling.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from taskfleet.client import Client
from taskfleet.config import load_settings
from taskfleet.workers.profiles import io_profile
from tests.support.waiting import wait_for
from tests.support.workers import Fleet

#: Far above kombu's 10 connections, so simultaneous acks would exhaust a default pool.
GREENLETS = 80
#: Every greenlet sleeps the same time, so their acks all arrive together.
ROUNDS = 6
WAIT_MS = 40
RESULT_TIMEOUT_S = 30.0
ACK_DEADLINE_S = 30.0
BROKEN_LINK_SIGNS = ("Couldn't ack", "Connection to broker lost", "MaxConnectionsError")


@pytest.fixture
def green_fleet(redis_env: dict[str, str], tmp_path: Path) -> Iterator[Fleet]:
    suffix = uuid.uuid4().hex[:6]
    env = {
        **redis_env,
        "TASKFLEET_CPU_QUEUE": f"cpu-green-{suffix}",
        "TASKFLEET_IO_QUEUE": f"io-green-{suffix}",
    }
    running = Fleet(env, tmp_path)
    settings = load_settings(**running.settings_overrides)
    try:
        running.start(io_profile(settings, GREENLETS), "io")
        yield running
    finally:
        running.stop()


def test_simultaneous_acks_of_a_full_gevent_pool_all_land(
    green_fleet: Fleet, redis_client: redis.Redis
) -> None:
    client = Client(green_fleet.app())
    try:
        jobs = [("io.wait", {"ms": WAIT_MS}) for _ in range(GREENLETS * ROUNDS)]
        handles = client.enqueue_many(jobs)
        results = [h.result(RESULT_TIMEOUT_S) for h in handles]
    finally:
        client.close()

    assert len(results) == GREENLETS * ROUNDS
    assert all(r["waited_ms"] >= WAIT_MS for r in results)
    log = (green_fleet.log_dir / "io.log").read_text(errors="replace")
    for sign in BROKEN_LINK_SIGNS:
        assert sign not in log, f"{sign!r} in the worker's log"
    queue = green_fleet.env["TASKFLEET_IO_QUEUE"].encode()

    def stranded() -> list[bytes]:
        return [t for t, record in redis_client.hgetall("unacked").items() if queue in record]

    # With acks_late a job's ack follows its result: wait for the acks, well before the
    # visibility timeout (an hour) that a stranded delivery would wait for.
    wait_for(lambda: not stranded(), ACK_DEADLINE_S, "every delivery to be acked")
