"""One trace from ``enqueue_many`` through a prefork and a gevent worker to the Postgres write.

The producer is this process: a client given an SDK provider with the in-memory exporter.
The workers and their persisters are other processes, started with ``TASKFLEET_TRACING=true``
and exporting over OTLP/HTTP (the extra's exporter, as against a real collector) to a
receiver on loopback. The trace must hold, linked by ids: the producer's ``publish`` span;
each job's ``run/<task>`` span as its child, in the pool that ran it; the job's
``result.write`` under its run span; and a persister's ``results.persist`` span linking to
that write.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from taskfleet.client import Client
from tests.support.otlp import ReceivedSpan, Receiver, otlp_receiver
from tests.support.waiting import wait_for
from tests.support.workers import Fleet, running_fleet

pytest.importorskip("opentelemetry.sdk", reason="needs the taskfleet[tracing] extra")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

RESULT_TIMEOUT_S = 30.0
SPANS_DEADLINE_S = 20.0
#: Spans leave the workers within this (ms; the SDK's default is 5 s).
EXPORT_DELAY_MS = "100"
JOBS = (("cpu.noop", 1), ("io.wait", {"ms": 1}))
#: The test stack's Redis database this test's fleet has to itself.
PRIVATE_DB = 9


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with otlp_receiver() as found:
        yield found


@pytest.fixture
def traced_fleet(redis_env: dict[str, str], receiver: Receiver, tmp_path: Path) -> Iterator[Fleet]:
    """A prefork CPU worker and a gevent I/O worker, tracing, on a Redis database of their
    own: the persistence stream is one per database, and the session's untraced persisters
    would otherwise take some of its entries."""
    suffix = uuid.uuid4().hex[:6]
    url = urlsplit(redis_env["TASKFLEET_REDIS_URL"])._replace(path=f"/{PRIVATE_DB}").geturl()
    redis.Redis.from_url(url).flushdb()
    env = {
        **redis_env,
        "TASKFLEET_BROKER_URL": url,
        "TASKFLEET_REDIS_URL": url,
        "TASKFLEET_CPU_QUEUE": f"cpu-trace-{suffix}",
        "TASKFLEET_IO_QUEUE": f"io-trace-{suffix}",
        "TASKFLEET_TRACING": "true",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": EXPORT_DELAY_MS,
    }
    try:
        with running_fleet(env, tmp_path, cpu=1, io=2) as fleet:
            yield fleet
    finally:
        redis.Redis.from_url(url).flushdb()


def hex_ids(span: object) -> tuple[str, str]:
    context = span.context  # type: ignore[attr-defined]
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def test_a_trace_spans_producer_workers_and_the_result_write(
    traced_fleet: Fleet, receiver: Receiver
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    client = Client(traced_fleet.app(), tracer_provider=provider)
    try:
        handles = client.enqueue_many(list(JOBS))
        for handle in handles:
            handle.result(RESULT_TIMEOUT_S)
    finally:
        client.close()

    [publish] = exporter.get_finished_spans()
    assert publish.name == "publish"
    trace_id, publish_id = hex_ids(publish)

    def runs() -> dict[str, ReceivedSpan] | None:
        found = {
            span.name: span
            for kind, _ in JOBS
            for span in receiver.named(f"run/{kind}")
            if span.trace_id == trace_id
        }
        return found if len(found) == len(JOBS) else None

    run_spans = wait_for(runs, SPANS_DEADLINE_S, "both jobs' run spans at the receiver")
    for span in run_spans.values():
        assert span.parent_id == publish_id, span
        assert span.service == "taskfleet-worker"

    def writes() -> list[ReceivedSpan] | None:
        found = [
            span
            for span in receiver.named("result.write")
            if span.trace_id == trace_id
            and span.parent_id in {run.span_id for run in run_spans.values()}
        ]
        return found if len(found) == len(JOBS) else None

    write_spans = wait_for(writes, SPANS_DEADLINE_S, "a result.write span under each run")
    assert {w.parent_id for w in write_spans} == {r.span_id for r in run_spans.values()}

    def persisted() -> set[tuple[str, str]] | None:
        linked = {
            link
            for span in receiver.named("results.persist")
            for link in span.links
            if span.service == "taskfleet-persister"
        }
        wanted = {(w.trace_id, w.span_id) for w in write_spans}
        return wanted if wanted <= linked else None

    wait_for(persisted, SPANS_DEADLINE_S, "persist spans linked to both result writes")
