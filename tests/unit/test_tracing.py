"""Tracing's parts, with the SDK's in-memory exporter: the spans, their links, and the headers
each publisher puts on a traced message (and only on a traced one)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from taskfleet.observability import tracing
from taskfleet.publishing.amqp import task_messages
from taskfleet.publishing.base import PreparedJobs
from taskfleet.routing.wire import EnvelopeTemplate, encode_single_arg_body

pytest.importorskip("opentelemetry.sdk", reason="needs the taskfleet[tracing] extra")

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(scope="module")
def global_exporter() -> InMemorySpanExporter:
    """An in-memory exporter on the process's global provider (set once per process)."""
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(TracerProvider())
    exporter = InMemorySpanExporter()
    trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(exporter))  # type: ignore[attr-defined]
    return exporter


@pytest.fixture
def spans(global_exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    global_exporter.clear()
    yield global_exporter
    global_exporter.clear()


def ids(span: object) -> tuple[str, str]:
    context = span.get_span_context()  # type: ignore[attr-defined]
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def test_a_template_stamped_with_trace_headers_renders_them_and_only_then() -> None:
    template = EnvelopeTemplate("cpu.noop", "cpu-q", 5, {}, keyed=False)
    traced = {"traceparent": TRACEPARENT, "tracestate": "k=v%d,o=%s"}
    body = encode_single_arg_body({"n": 1})
    with_trace = json.loads(template.stamped(1.5, traced).render("job-1", body))
    without = json.loads(template.stamped(1.5).render("job-1", body))
    assert with_trace["headers"]["traceparent"] == TRACEPARENT
    assert with_trace["headers"]["tracestate"] == "k=v%d,o=%s"
    assert with_trace["headers"]["taskfleet_sent_at"] == 1.5
    assert "traceparent" not in without["headers"]
    assert {k: v for k, v in with_trace["headers"].items() if k not in traced} == without["headers"]


def test_amqp_messages_carry_the_batch_headers() -> None:
    jobs = PreparedJobs(["cpu.noop"], ["job-1"], [b"[[1],{},{}]"], [5], ["cpu-q"], [None])
    jobs.headers = {"traceparent": TRACEPARENT}
    [message] = task_messages(jobs, "client-a")
    assert message.headers["traceparent"] == TRACEPARENT
    assert message.headers["taskfleet_client_id"] == "client-a"


def test_no_tracer_means_no_span_and_no_header() -> None:
    with tracing.publish_span(None, ["cpu.noop"]) as headers:
        assert headers == {}


def test_a_publish_span_yields_its_own_context_as_headers() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with tracing.publish_span(provider.get_tracer("t"), ["cpu.noop", "cpu.noop"]) as headers:
        pass
    [span] = exporter.get_finished_spans()
    trace_id, span_id = ids(span)
    assert headers["traceparent"].startswith(f"00-{trace_id}-{span_id}-")
    assert span.name == "publish cpu.noop"
    assert span.kind == trace.SpanKind.PRODUCER
    assert span.attributes is not None
    assert span.attributes["messaging.batch.message_count"] == 2


def test_a_result_write_is_a_child_of_the_running_job_and_names_itself(
    spans: InMemorySpanExporter,
) -> None:
    with tracing.result_write_span(True) as outside:
        assert outside is None  # no job span current: nothing to continue
    with tracing.result_write_span(False) as off:
        assert off is None
    tracer = trace.get_tracer("test")
    with (
        tracer.start_as_current_span("run/cpu.noop") as run,
        tracing.result_write_span(True) as parent,
    ):
        assert parent is not None
    write = next(s for s in spans.get_finished_spans() if s.name == "result.write")
    assert write.parent is not None
    assert write.parent.span_id == run.get_span_context().span_id
    assert parent.startswith("00-{}-{}-".format(*ids(write)))


def test_a_persist_span_links_each_traced_entry(spans: InMemorySpanExporter) -> None:
    other = "00-1bf7651916cd43dd8448eb211c80319c-c7ad6b7169203331-01"
    entries = [
        (b"1-0", {b"key": b"a", b"traceparent": TRACEPARENT.encode()}),
        (b"2-0", {b"key": b"b"}),  # not traced
        (b"3-0", {b"key": b"c", b"traceparent": b"garbage"}),
        (b"4-0", {b"key": b"d", b"traceparent": other.encode()}),
    ]
    with tracing.persist_span(True, entries):
        pass
    with tracing.persist_span(True, [entries[1], entries[2]]):
        pass  # nothing traced: no span
    [persist] = spans.get_finished_spans()
    assert persist.name == "results.persist"
    linked = {
        (format(link.context.trace_id, "032x"), format(link.context.span_id, "016x"))
        for link in persist.links
    }
    assert linked == {
        ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"),
        ("1bf7651916cd43dd8448eb211c80319c", "c7ad6b7169203331"),
    }


def test_a_persist_span_links_at_most_the_cap(spans: InMemorySpanExporter) -> None:
    entries = [
        (b"%d-0" % n, {b"traceparent": f"00-{n + 1:032x}-{n + 1:016x}-01".encode()})
        for n in range(tracing.MAX_LINKS + 10)
    ]
    with tracing.persist_span(True, entries):
        pass
    [persist] = spans.get_finished_spans()
    assert len(persist.links) == tracing.MAX_LINKS


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ("none", []),
        ("console", ["ConsoleSpanExporter"]),
        ("otlp", ["OTLPSpanExporter"]),
        ("otlp_proto_http, console", ["OTLPSpanExporter", "ConsoleSpanExporter"]),
    ],
)
def test_exporters_are_named_by_the_standard_variable(
    monkeypatch: pytest.MonkeyPatch, names: str, expected: list[str]
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", names)
    found = tracing._exporters()
    assert [type(e).__name__ for e in found] == expected
    for exporter in found:
        exporter.shutdown()


def test_an_unknown_exporter_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin_json")
    with pytest.raises(RuntimeError, match="zipkin_json"):
        tracing._exporters()
