"""``python -m bench.rabbit_cost``: RabbitMQ's own CPU per job, classic priority vs quorum queue.

The cost model (BENCHMARKS.md, "Cost per job and the scale-out model") projects how many jobs
one broker carries from the broker's CPU per job. For Redis, C1 reads it from ``INFO``; this
measures RabbitMQ's: the CPU time of the local server (the ``beam.smp`` process, read with
psutil, so the server must run on this machine, on loopback) while one producer publishes
``--jobs`` messages of a taskfleet job's size with publisher confirms, and one consumer
takes them with manual acks (prefetch ``PREFETCH``), as a worker does. Two queues, each
declared for the run and deleted after it:

* ``classic``: what taskfleet declares (``x-max-priority`` 9, durable);
* ``quorum``: ``x-queue-type: quorum`` (replicated by Raft; here a one-node cluster, so the
  replication cost to other nodes is not in the figure, and quorum queues offer no
  ``x-max-priority``, which taskfleet's priorities need).

Each message is published persistent, as Celery publishes. Medians of ``--runs`` runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from typing import Any

import psutil
from kombu import Connection, Exchange, Producer, Queue

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672//"
DEFAULT_JOBS = 20_000
DEFAULT_RUNS = 3
#: A taskfleet job message's body and headers are about this size (C1: ~2.6 KB into Redis
#: per job, the message being most of it).
BODY_BYTES = 1_500
PREFETCH = 100
PRIORITY_MAX = 9
DRAIN_TIMEOUT_S = 120.0
KINDS: dict[str, dict[str, Any]] = {
    "classic": {"x-max-priority": PRIORITY_MAX},
    "quorum": {"x-queue-type": "quorum"},
}


def broker_cpu() -> float:
    """CPU seconds (user + system) the local RabbitMQ server has used so far."""
    total = 0.0
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "beam.smp":
            times = proc.cpu_times()
            total += times.user + times.system
    if total == 0.0:
        raise RuntimeError("no local beam.smp process: RabbitMQ must run on this machine")
    return total


def one_run(url: str, kind: str, jobs: int) -> dict[str, float]:
    """Publish and consume ``jobs`` messages on a fresh ``kind`` queue; broker CPU per job."""
    name = f"bench-rabbit-{kind}-{uuid.uuid4().hex[:8]}"
    exchange = Exchange(name, type="direct", durable=True)
    queue = Queue(name, exchange, routing_key=name, durable=True, queue_arguments=KINDS[kind])
    body = "x" * BODY_BYTES
    with Connection(url, transport_options={"confirm_publish": True}) as conn:
        bound = queue(conn.channel())
        bound.declare()
        try:
            cpu_before, started = broker_cpu(), time.perf_counter()
            producer = Producer(conn.channel(), exchange=exchange, routing_key=name)
            for index in range(jobs):
                producer.publish(body, delivery_mode=2, headers={"i": index})
            published = time.perf_counter() - started
            received = 0

            def on_message(_body: Any, message: Any) -> None:
                nonlocal received
                received += 1
                message.ack()

            consumer_channel = conn.channel()
            consumer_channel.basic_qos(0, PREFETCH, False)
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            with conn.Consumer(queue, channel=consumer_channel, callbacks=[on_message]):
                while received < jobs and time.monotonic() < deadline:
                    conn.drain_events(timeout=1.0)
            elapsed = time.perf_counter() - started
            cpu = broker_cpu() - cpu_before
        finally:
            bound.delete()
    if received < jobs:
        raise RuntimeError(f"{kind}: {received} of {jobs} messages consumed")
    return {
        "broker_cpu_us_per_job": cpu / jobs * 1e6,
        "publish_per_s": jobs / published,
        "end_to_end_per_s": jobs / elapsed,
    }


def main() -> None:
    """Run both queue kinds ``--runs`` times, alternating; print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="a RabbitMQ on this machine")
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS)
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    for index in range(args.runs):
        order = list(KINDS) if index % 2 == 0 else list(KINDS)[::-1]
        for kind in order:
            runs[kind].append(one_run(args.url, kind, args.jobs))
    print(
        f"| queue ({args.jobs:,} jobs, median of {args.runs}) | RabbitMQ CPU µs/job |"
        " projected jobs/s per broker core | publish jobs/s (confirms) | end to end jobs/s |"
    )
    print("|---|---|---|---|---|")
    for kind, results in runs.items():
        cpu = statistics.median(r["broker_cpu_us_per_job"] for r in results)
        pub = statistics.median(r["publish_per_s"] for r in results)
        e2e = statistics.median(r["end_to_end_per_s"] for r in results)
        print(f"| {kind} | {cpu:.1f} | {1e6 / cpu:,.0f} | {pub:,.0f} | {e2e:,.0f} |")


if __name__ == "__main__":
    main()
