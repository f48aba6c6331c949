"""End to end on the Redis broker: pools, results in Redis and Postgres, bare send_task."""

from __future__ import annotations

import json

import pytest
import redis
from celery import Celery
from sqlalchemy import Engine, text

from taskfleet.client import Client, JobFailed
from tests.support.waiting import wait_for
from tests.support.workers import Fleet, is_cpu_node

pytestmark = pytest.mark.usefixtures("clean_state")


def _meta(redis_client: redis.Redis, job_id: str) -> dict[str, object]:
    raw = redis_client.get(f"celery-task-meta-{job_id}")
    assert raw is not None, f"no result in Redis for {job_id}"
    return json.loads(raw)


def test_cpu_and_io_jobs_run_on_their_own_pools(
    redis_fleet: Fleet, redis_client: redis.Redis
) -> None:
    client = Client(redis_fleet.app())
    cpu = client.enqueue("cpu.checksum", {"rounds": 3})
    io = client.enqueue("io.wait", {"ms": 5})
    assert len(cpu.result(30)["sha256"]) == 64
    assert io.result(30)["waited_ms"] >= 5
    assert is_cpu_node(str(_meta(redis_client, cpu.id)["worker"]))
    assert str(_meta(redis_client, io.id)["worker"]).startswith("io-")


def test_results_land_in_redis_and_postgres(
    redis_fleet: Fleet, redis_client: redis.Redis, engine: Engine
) -> None:
    client = Client(redis_fleet.app())
    ok = client.enqueue("cpu.checksum", {"rounds": 1})
    bad = client.enqueue("cpu.checksum", {"rounds": 0})
    value = ok.result(30)
    with pytest.raises(JobFailed, match="ValueError: rounds must be"):
        bad.result(30)
    assert _meta(redis_client, ok.id)["status"] == "SUCCESS"

    def rows() -> dict[str, tuple[str, dict[str, object]]]:
        with engine.connect() as conn:
            found = conn.execute(
                text(
                    "SELECT task_id, status, value FROM taskfleet_results WHERE task_id IN (:a, :b)"
                ),
                {"a": ok.id, "b": bad.id},
            ).all()
        return {r.task_id: (r.status, r.value) for r in found} if len(found) == 2 else {}

    stored = wait_for(rows, 30, "both results in Postgres")
    assert stored[ok.id][0] == "SUCCESS"
    assert stored[ok.id][1]["result"] == value
    assert stored[bad.id][0] == "FAILURE"
    assert stored[bad.id][1]["result"]["exc_type"] == "ValueError"


def test_result_survives_redis_losing_it(
    redis_fleet: Fleet, redis_client: redis.Redis, engine: Engine
) -> None:
    client = Client(redis_fleet.app())
    handle = client.enqueue("cpu.checksum", {"rounds": 2})
    value = handle.result(30)

    def persisted() -> bool:
        with engine.connect() as conn:
            return bool(
                conn.execute(
                    text("SELECT 1 FROM taskfleet_results WHERE task_id = :id"), {"id": handle.id}
                ).first()
            )

    wait_for(persisted, 30, "the result in Postgres")
    redis_client.delete(f"celery-task-meta-{handle.id}")
    fresh = Client(redis_fleet.app()).handle(handle.id, "cpu.checksum")
    assert fresh.status() == "SUCCESS"
    assert fresh.result(5) == value


def test_bare_celery_send_task_by_name(redis_fleet: Fleet, redis_env: dict[str, str]) -> None:
    """A service that does not import taskfleet: stock Celery, JSON, protocol v2."""
    bare = Celery(
        broker=redis_env["TASKFLEET_BROKER_URL"], backend=redis_env["TASKFLEET_REDIS_URL"]
    )
    bare.conf.update(
        task_serializer="json", accept_content=["json"], result_accept_content=["json"]
    )
    routed = bare.send_task(
        "cpu.checksum", args=[{"rounds": 4}], queue=redis_env["TASKFLEET_CPU_QUEUE"]
    )
    unrouted = bare.send_task(
        "io.wait", args=[{"ms": 1}]
    )  # default queue: forwarded by the I/O pool
    assert len(routed.get(timeout=30)["sha256"]) == 64
    assert unrouted.get(timeout=30)["waited_ms"] >= 1
    unrouted_cpu = bare.send_task("cpu.checksum", args=[{"rounds": 1}], priority=9)
    assert unrouted_cpu.get(timeout=30)["rounds"] == 1
    bare.close()


def test_idempotency_key_publishes_once(redis_fleet: Fleet) -> None:
    client = Client(redis_fleet.app())
    first = client.enqueue("cpu.checksum", {"rounds": 5}, idempotency_key="order-42")
    again = client.enqueue("cpu.checksum", {"rounds": 5}, idempotency_key="order-42")
    assert again.id == first.id
    assert not first.deduplicated
    assert again.deduplicated
    assert first.result(30) == again.result(30)


def test_enqueue_many_runs_every_job(redis_fleet: Fleet) -> None:
    client = Client(redis_fleet.app())
    handles = client.enqueue_many(
        [("cpu.checksum", {"rounds": i % 7 + 1}) for i in range(150)]
        + [("io.wait", {"ms": 1}) for _ in range(150)],
        priority="high",
    )
    assert len({h.id for h in handles}) == 300
    results = [h.result(60) for h in handles]
    assert sum(1 for r in results if "sha256" in r) == 150
    assert sum(1 for r in results if "waited_ms" in r) == 150
