"""The same fleet on RabbitMQ: pools, results, bare send_task, batches, dead-letter topology."""

from __future__ import annotations

import pytest
from celery import Celery
from kombu import Connection

from taskfleet.client import Client
from taskfleet.routing.depth import amqp_queue_depths
from tests.support.workers import Fleet, is_cpu_node

pytestmark = [pytest.mark.rabbitmq, pytest.mark.usefixtures("clean_state")]


def test_cpu_and_io_jobs_on_rabbitmq(amqp_fleet: Fleet) -> None:
    client = Client(amqp_fleet.app())
    cpu = client.enqueue("cpu.checksum", {"rounds": 2}, priority="high")
    io = client.enqueue("io.wait", {"ms": 2})
    assert cpu.result(30)["rounds"] == 2
    assert io.result(30)["waited_ms"] >= 2
    assert is_cpu_node(cpu.async_result.worker)  # type: ignore[union-attr]
    assert io.async_result.worker.startswith("io-")  # type: ignore[union-attr]


def test_bare_send_task_on_rabbitmq(amqp_fleet: Fleet, amqp_env: dict[str, str]) -> None:
    bare = Celery(broker=amqp_env["TASKFLEET_BROKER_URL"], backend=amqp_env["TASKFLEET_REDIS_URL"])
    bare.conf.update(
        task_serializer="json", accept_content=["json"], result_accept_content=["json"]
    )
    result = bare.send_task("cpu.checksum", args=[{"rounds": 3}])  # default queue, forwarded
    assert result.get(timeout=90)["rounds"] == 3
    bare.close()


def test_queues_declare_priorities_and_dead_letters(
    amqp_fleet: Fleet, amqp_env: dict[str, str]
) -> None:
    cpu_queue = amqp_env["TASKFLEET_CPU_QUEUE"]
    with Connection(amqp_env["TASKFLEET_BROKER_URL"]) as conn:
        depths = amqp_queue_depths(conn, [cpu_queue, f"{cpu_queue}.dlq", "no-such-queue-xyz"])
        assert depths["no-such-queue-xyz"] == 0
        # Re-declaring with different arguments would fail; the same arguments pass.
        topo = Client(amqp_fleet.app()).topology
        topo.work_queue("cpu")(conn.channel()).declare()
        topo.dead_letter_queue("cpu")(conn.channel()).declare()
        arguments = topo.work_queue("cpu").queue_arguments
    assert arguments["x-max-priority"] == 9
    assert arguments["x-dead-letter-routing-key"] == f"{cpu_queue}.dlq"


def test_enqueue_many_on_rabbitmq(amqp_env: dict[str, str], amqp_fleet: Fleet) -> None:
    """10,000 jobs to a queue no worker reads arrive whole (one transaction per 1,000)."""
    from taskfleet.app import create_app
    from taskfleet.config import load_settings

    overrides = {k.removeprefix("TASKFLEET_").lower(): v for k, v in amqp_env.items()}
    overrides["cpu_queue"] = f"{amqp_env['TASKFLEET_CPU_QUEUE']}-idle"
    overrides["io_queue"] = f"{amqp_env['TASKFLEET_IO_QUEUE']}-idle"
    client = Client(create_app(load_settings(**overrides)))
    try:
        client.enqueue_many([("cpu.noop", {"doc": "x" * 180})] * 10_000)
        with Connection(amqp_env["TASKFLEET_BROKER_URL"]) as conn:
            assert (
                amqp_queue_depths(conn, [overrides["cpu_queue"]])[overrides["cpu_queue"]] == 10_000
            )
    finally:
        with Connection(amqp_env["TASKFLEET_BROKER_URL"]) as conn:
            channel = conn.channel()
            for name in (overrides["cpu_queue"], overrides["io_queue"]):
                for queue in (name, f"{name}.dlq"):
                    channel.queue_delete(queue)
        client.close()
