"""Tracing with OpenTelemetry (the ``taskfleet[tracing]`` extra): one trace per enqueue call,
from the producer through the worker to the result's write and its Postgres row.

Off by default; ``TASKFLEET_TRACING=true`` turns it on in every taskfleet process, or a
:class:`~taskfleet.client.Client` given a ``tracer_provider`` traces on its own. Off, nothing
of OpenTelemetry is imported and no message carries a trace header.

The spans:

``publish <kind>`` (PRODUCER, the producer)
    One per ``enqueue``/``enqueue_many`` call; every message of the call carries its context
    in W3C ``traceparent``/``tracestate`` headers. taskfleet's publishers build Celery's
    messages themselves (:mod:`taskfleet.publishing`), so Celery's ``before_task_publish``,
    where the Celery instrumentation injects context, never fires for them: the client
    injects here. A plain ``send_task``/``apply_async`` goes through Celery's signals, and
    the instrumentation (when the sending process runs it) injects as usual.
``run/<task>`` (CONSUMER, the worker)
    ``opentelemetry-instrumentation-celery``'s span, continued from the headers (Celery makes
    a message's custom headers attributes of ``task.request``, where it reads them).
``result.write`` (CLIENT, the worker)
    The result's write to Redis, under the run span. The persistence stream's entry carries
    the write's ``traceparent``.
``results.persist`` (CONSUMER, the persister)
    One per batch written to Postgres, with a link to each traced entry's write: a batch
    serves many traces, so links, not a parent (OpenTelemetry's messaging conventions for
    batch receives).

The provider: a process that has set none gets one (:func:`ensure_provider`): the SDK's,
``service.name`` from ``OTEL_SERVICE_NAME`` (else ``taskfleet-<role>``), a batch processor
per exporter named in ``OTEL_TRACES_EXPORTER`` (default ``otlp``, which is OTLP over HTTP
here; ``console``; ``none``), configured by the standard ``OTEL_EXPORTER_OTLP_*`` and
``OTEL_BSP_*`` variables. A process that set its own provider keeps it. In a prefork worker
each pool process builds its own, after the fork: a batch processor's thread does not
survive one.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer, TracerProvider

log = logging.getLogger(__name__)

#: The W3C trace-context headers a traced message carries.
TRACE_HEADERS: Final = ("traceparent", "tracestate")
#: The persistence stream's field holding the result write's ``traceparent``.
STREAM_FIELD: Final = "traceparent"
TRACER_NAME: Final = "taskfleet"
#: ``OTEL_TRACES_EXPORTER`` when unset; ``otlp`` means OTLP over HTTP (the extra's exporter).
DEFAULT_EXPORTER: Final = "otlp"
EXPORTER_ALIASES: Final = {"otlp": "otlp_proto_http"}
#: At most this many links on one persist span (OpenTelemetry's default span link limit).
MAX_LINKS: Final = 128
MISSING_EXTRA: Final = "tracing is on (TASKFLEET_TRACING) but OpenTelemetry is not installed: pip install 'taskfleet[tracing]'"


def tracing_enabled() -> bool:
    """Whether ``TASKFLEET_TRACING`` is on for this process."""
    from taskfleet.config.observability import get_observability_settings

    return get_observability_settings().tracing


def ensure_provider(role: str) -> TracerProvider:
    """The global tracer provider, built from the ``OTEL_*`` environment if none is set."""
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider as SdkProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise RuntimeError(MISSING_EXTRA) from exc

    current = trace.get_tracer_provider()
    if not isinstance(current, trace.ProxyTracerProvider):
        return current
    name = os.environ.get("OTEL_SERVICE_NAME") or f"taskfleet-{role}"
    provider = SdkProvider(resource=Resource.create({SERVICE_NAME: name}))
    for exporter in _exporters():
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return trace.get_tracer_provider()


def _exporters() -> list[Any]:
    """The exporters ``OTEL_TRACES_EXPORTER`` names, from their entry points."""
    from importlib.metadata import entry_points

    names = os.environ.get("OTEL_TRACES_EXPORTER", DEFAULT_EXPORTER)
    exporters = []
    for name in filter(None, (n.strip() for n in names.split(","))):
        if name == "none":
            continue
        found = entry_points(group="opentelemetry_traces_exporter", name=name)
        if not found and name in EXPORTER_ALIASES:
            found = entry_points(group="opentelemetry_traces_exporter", name=EXPORTER_ALIASES[name])
        if not found:
            raise RuntimeError(f"OTEL_TRACES_EXPORTER names {name!r}, which is not installed")
        exporters.append(next(iter(found)).load()())
    return exporters


def producer_tracer(provider: TracerProvider | None) -> Tracer | None:
    """A client's tracer: from ``provider``, else the global one when tracing is on, else None."""
    if provider is None:
        if not tracing_enabled():
            return None
        provider = ensure_provider("producer")
    return provider.get_tracer(TRACER_NAME)


@contextlib.contextmanager
def publish_span(tracer: Tracer | None, kinds: Sequence[str]) -> Iterator[dict[str, str]]:
    """A PRODUCER span around one publish; yields the headers its messages carry ({} off)."""
    if tracer is None:
        yield {}
        return
    from opentelemetry import trace
    from opentelemetry.propagate import inject

    name = f"publish {kinds[0]}" if len(set(kinds)) == 1 else "publish"
    with tracer.start_as_current_span(name, kind=trace.SpanKind.PRODUCER) as span:
        span.set_attribute("messaging.system", "celery")
        span.set_attribute("messaging.batch.message_count", len(kinds))
        carrier: dict[str, str] = {}
        inject(carrier)
        yield {key: value for key, value in carrier.items() if key in TRACE_HEADERS}


def instrument_worker(**_: Any) -> None:
    """Signal handler (``worker_process_init``; a solo or gevent worker's ``worker_init``
    through :func:`taskfleet.workers.signals.trace_inline_jobs`): when tracing is on, this
    process gets its provider and Celery's instrumentation (a second call does nothing)."""
    if not tracing_enabled():
        return
    ensure_provider("worker")
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    instrumentor = CeleryInstrumentor()  # type: ignore[no-untyped-call]
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()


def flush_worker(**_: Any) -> None:
    """Signal handler (``worker_process_shutdown``, ``worker_shutdown``): export what is left."""
    if tracing_enabled():
        flush_spans()


def flush_spans() -> None:
    """Export the spans this process's provider still holds (an SDK provider; else nothing)."""
    from opentelemetry import trace

    flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if flush is not None:
        flush()


@contextlib.contextmanager
def result_write_span(enabled: bool) -> Iterator[str | None]:
    """A CLIENT span around a result write when ``enabled`` and a span is current (a traced
    job); yields the write's ``traceparent`` for the stream entry, else None."""
    if not enabled:
        yield None
        return
    from opentelemetry import trace
    from opentelemetry.propagate import inject

    if not trace.get_current_span().get_span_context().is_valid:
        yield None
        return
    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span("result.write", kind=trace.SpanKind.CLIENT) as span:
        span.set_attribute("db.system", "redis")
        carrier: dict[str, str] = {}
        inject(carrier)
        yield carrier.get("traceparent")


@contextlib.contextmanager
def persist_span(
    enabled: bool, entries: Sequence[tuple[bytes, dict[bytes, bytes]]]
) -> Iterator[None]:
    """A CONSUMER span around one batch of stream entries written to Postgres, linked to the
    result writes of its traced entries (none traced: no span)."""
    if not enabled:
        yield
        return
    from opentelemetry import trace
    from opentelemetry.propagate import extract

    field = STREAM_FIELD.encode()
    links: list[trace.Link] = []
    for _, fields in entries:
        parent = fields.get(field)
        if parent is None or len(links) >= MAX_LINKS:
            continue
        carrier = {"traceparent": parent.decode(errors="replace")}
        context = trace.get_current_span(extract(carrier)).get_span_context()
        if context.is_valid:
            links.append(trace.Link(context))
    if not links:  # no traced job in the batch: no span either
        yield
        return
    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(
        "results.persist", kind=trace.SpanKind.CONSUMER, links=links
    ) as span:
        span.set_attribute("db.system", "postgresql")
        span.set_attribute("messaging.batch.message_count", len(entries))
        yield
