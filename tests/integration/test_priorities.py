"""A queued high-priority job overtakes queued low ones, on Redis and on RabbitMQ alike."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
import redis

from taskfleet.client import Client
from tests.support.workers import Fleet, running_fleet

LOW_JOBS = 12


def _done_at(redis_client: redis.Redis, job_id: str) -> datetime:
    meta = json.loads(redis_client.get(f"celery-task-meta-{job_id}") or b"{}")
    return datetime.fromisoformat(meta["date_done"])


def _backlog_then_drain(env: dict[str, str], log_dir: Path, redis_client: redis.Redis) -> list[str]:
    """Queue low jobs then one critical job with no worker, start one slot, return run order."""
    client = Client(Fleet(env, log_dir).app())
    lows = client.enqueue_many(
        [("cpu.checksum", {"rounds": 50, "n": i}) for i in range(LOW_JOBS)], priority="low"
    )
    normal = client.enqueue("cpu.checksum", {"rounds": 50, "n": "normal"})
    critical = client.enqueue("cpu.checksum", {"rounds": 50, "n": "critical"}, priority="critical")
    with running_fleet(env, log_dir, cpu=1, pools=("cpu",)):
        for handle in [*lows, normal, critical]:
            handle.result(60)
    order = sorted([*lows, normal, critical], key=lambda h: _done_at(redis_client, h.id))
    names = {critical.id: "critical", normal.id: "normal"}
    return [names.get(h.id, "low") for h in order]


def _private_env(env: dict[str, str], tag: str) -> dict[str, str]:
    return {**env, "TASKFLEET_CPU_QUEUE": f"{env['TASKFLEET_CPU_QUEUE']}-{tag}"}


@pytest.mark.usefixtures("clean_state")
def test_priority_order_on_redis(
    redis_env: dict[str, str], redis_client: redis.Redis, tmp_path: Path
) -> None:
    order = _backlog_then_drain(_private_env(redis_env, "prio"), tmp_path, redis_client)
    assert order[:2] == ["critical", "normal"], order


@pytest.mark.rabbitmq
@pytest.mark.usefixtures("clean_state")
def test_priority_order_on_rabbitmq(
    amqp_env: dict[str, str], redis_client: redis.Redis, tmp_path: Path
) -> None:
    env = _private_env(amqp_env, "prio")
    try:
        order = _backlog_then_drain(env, tmp_path, redis_client)
    finally:
        from kombu import Connection

        with Connection(env["TASKFLEET_BROKER_URL"]) as conn:
            channel = conn.channel()
            for name in (env["TASKFLEET_CPU_QUEUE"], f"{env['TASKFLEET_CPU_QUEUE']}.dlq"):
                channel.queue_delete(name)
    assert order[:2] == ["critical", "normal"], order
