"""A minimal OTLP/HTTP trace receiver on loopback: what a collector sees from other processes.

The exporters of ``taskfleet[tracing]`` POST protobuf ``ExportTraceServiceRequest`` bodies to
``/v1/traces``; this server decodes them with ``opentelemetry-proto`` (the exporter's own
dependency) and keeps each span as a :class:`ReceivedSpan`.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LOOPBACK = "127.0.0.1"
TRACES_PATH = "/v1/traces"


@dataclass(frozen=True)
class ReceivedSpan:
    """A span as exported: ids in hex, as the in-memory exporter's ``format`` gives them."""

    name: str
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    links: tuple[tuple[str, str], ...]  # (trace id, span id)


class Receiver:
    """The spans received so far (thread-safe)."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.lock = threading.Lock()
        self.endpoint = ""

    def add(self, body: bytes) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        found = []
        for resource_spans in request.resource_spans:
            attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(
                        ReceivedSpan(
                            name=span.name,
                            service=attrs.get("service.name", ""),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            links=tuple((lk.trace_id.hex(), lk.span_id.hex()) for lk in span.links),
                        )
                    )
        with self.lock:
            self.spans.extend(found)

    def named(self, name: str) -> list[ReceivedSpan]:
        """The spans received with ``name``."""
        with self.lock:
            return [span for span in self.spans if span.name == name]


@contextmanager
def otlp_receiver() -> Iterator[Receiver]:
    """A receiver listening on a free loopback port for the duration of the block."""
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != TRACES_PATH:
                self.send_error(404)
                return
            receiver.add(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    receiver.endpoint = f"http://{LOOPBACK}:{server.server_address[1]}{TRACES_PATH}"
    thread = threading.Thread(target=server.serve_forever, name="otlp-receiver", daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
