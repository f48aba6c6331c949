"""Real HTTP backends on 127.0.0.1 ephemeral ports, for the balancing tests.

Each one counts the calls it served (health probes apart) and can be told to slow down,
answer 503, or die (listening socket and open connections closed) and come back on the
same port.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from taskfleet.config.exposure import OutboundAllow
from taskfleet.outbound import outbound_client

HEALTH_PATH = "/health"
LOOPBACK = "127.0.0.1"
#: How soon a killed backend's accept loop notices (``shutdown`` waits for it).
POLL_INTERVAL_S = 0.02


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx's pool expects
    disable_nagle_algorithm = True  # else headers and body wait for a delayed ACK (~40 ms)
    server: _Server

    def _answer(self) -> None:
        backend = self.server.backend
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        health = self.path == HEALTH_PATH
        if not health:
            backend.count()
        if backend.delay_s and not health:
            time.sleep(backend.delay_s)
        status = backend.status if not health or backend.status >= 500 else 200
        body = backend.name.encode()
        self.send_response(status)
        self.send_header("X-Backend", backend.name)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, backend: LoopbackBackend, port: int) -> None:
        self.backend = backend
        self.connections: set[socket.socket] = set()
        super().__init__((LOOPBACK, port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.connections.discard(request)
        super().shutdown_request(request)


class LoopbackBackend:
    """One HTTP backend on 127.0.0.1; ``delay_s``, ``status`` and ``kill``/``revive`` steer it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.delay_s = 0.0
        self.status = 200
        self.port = 0
        self._served = 0
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self.revive()

    @property
    def url(self) -> str:
        """The base URL."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def served(self) -> int:
        """Calls served so far, health probes apart."""
        with self._lock:
            return self._served

    def count(self) -> None:
        """Count one call."""
        with self._lock:
            self._served += 1

    def revive(self) -> None:
        """Listen (again, on the same port once it had one)."""
        self._server = _Server(self, self.port)
        self.port = self._server.server_address[1]
        threading.Thread(
            target=self._server.serve_forever, args=(POLL_INTERVAL_S,), daemon=True
        ).start()

    def kill(self) -> None:
        """Stop listening and cut every open connection: the backend is gone."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        for conn in list(server.connections):
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


#: The outbound allowlist the balancing tests run with: their backends, on loopback.
LOOPBACK_ALLOWED = OutboundAllow.parse((LOOPBACK,))


def loopback_client() -> httpx.Client:
    """The outbound client jobs get (every connection vetted), with loopback allowlisted."""
    return outbound_client(LOOPBACK_ALLOWED)


@contextmanager
def loopback_backends(*names: str) -> Iterator[list[LoopbackBackend]]:
    """Started backends, killed at the end."""
    backends = [LoopbackBackend(name) for name in names]
    try:
        yield backends
    finally:
        for backend in backends:
            backend.kill()
