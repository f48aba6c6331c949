"""The host's one metrics endpoint: ``/metrics``, ``/healthz`` and ``/readyz`` over HTTP.

A small threaded ``http.server`` (no framework), run by ``taskfleet up`` as a supervised
child or alone with ``taskfleet metrics serve``. ``/metrics`` sums the job metrics every
worker process of the host wrote under ``PROMETHEUS_MULTIPROC_DIR`` and adds the fleet gauges
read from Redis (:mod:`~taskfleet.observability.fleet`). ``/healthz`` answers 200 while the
process serves; ``/readyz`` answers 200 or 503 with one line per check. With
``TASKFLEET_METRICS_BASIC_AUTH`` set, every path asks for those credentials.
"""

from __future__ import annotations

import base64
import glob
import hmac
import os
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final

import redis
from celery import Celery
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import create_engine

from taskfleet.config import Settings, resolve_services
from taskfleet.config.observability import ObservabilitySettings
from taskfleet.observability.fleet import DEFAULT_UNACKED_KEY, FleetCollector, FleetSources
from taskfleet.observability.jobs import MULTIPROC_ENV
from taskfleet.observability.readiness import Probes, run_checks
from taskfleet.results.store import sqlalchemy_url

TEXT_PLAIN: Final = "text/plain; charset=utf-8"
REALM: Final = 'Basic realm="taskfleet"'


class WorkerFiles(Collector):
    """The job metrics in a multiprocess folder and its sub-folders, summed.

    ``taskfleet up`` gives its workers one folder; containers sharing a volume each write to
    a sub-folder of their own (their pids would collide in one folder), and this endpoint
    reads them all, as prometheus-client's ``MultiProcessCollector`` reads one folder.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def collect(self) -> Iterable[Metric]:
        """Every metric of every ``*.db`` file under the folder, merged."""
        from prometheus_client.multiprocess import MultiProcessCollector

        files = glob.glob(os.path.join(self.folder, "**", "*.db"), recursive=True)
        merged: Iterable[Metric] = MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
        return merged


@dataclass
class Endpoint:
    """What the handler serves: the registry, the readiness probes, the credentials."""

    registry: CollectorRegistry
    probes: Probes
    credentials: bytes | None  # b"user:password", or None for no auth

    def authorized(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries the credentials (always, with none)."""
        if self.credentials is None:
            return True
        scheme, _, value = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(value, validate=True)
        except ValueError:
            return False
        return hmac.compare_digest(given, self.credentials)


def build_endpoint(
    settings: Settings,
    app: Celery,
    obs: ObservabilitySettings,
    multiproc_dir: str | None = None,
) -> Endpoint:
    """Build the registry and the service clients (nothing is contacted yet).

    Args:
        settings: The fleet's settings (queues, service URLs).
        app: An app on the fleet's broker (readiness asks its workers).
        obs: Where to listen, credentials, readiness bounds.
        multiproc_dir: The workers' metric files (default: ``PROMETHEUS_MULTIPROC_DIR``).
    """
    urls = resolve_services(settings)
    timeout = obs.ready_probe_timeout_s
    client_options = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    results = redis.Redis.from_url(urls.redis_url, **client_options)
    broker = (
        None if settings.broker_is_amqp else redis.Redis.from_url(urls.broker_url, **client_options)
    )
    options = dict(app.conf.broker_transport_options or {})
    unacked = str(options.get("unacked_key", DEFAULT_UNACKED_KEY))
    sources = FleetSources(settings, results, broker, unacked)
    engine = create_engine(
        sqlalchemy_url(urls.database_url),
        pool_size=1,
        pool_pre_ping=True,
        connect_args={"connect_timeout": max(1, round(timeout))},
    )
    registry = CollectorRegistry(auto_describe=False)
    folder = multiproc_dir or os.environ.get(MULTIPROC_ENV)
    if folder:
        registry.register(WorkerFiles(folder))
    registry.register(FleetCollector(sources, obs.metrics_cache_s))
    auth = obs.metrics_basic_auth
    credentials = auth.get_secret_value().encode() if auth is not None else None
    return Endpoint(registry, Probes(sources, engine, app, obs), credentials)


def handler_for(endpoint: Endpoint) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``endpoint``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if not endpoint.authorized(self.headers.get("Authorization")):
                self._send(HTTPStatus.UNAUTHORIZED, b"unauthorized\n", TEXT_PLAIN, REALM)
                return
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body = generate_latest(endpoint.registry)
                self._send(HTTPStatus.OK, body, CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._send(HTTPStatus.OK, b"ok\n", TEXT_PLAIN)
            elif path == "/readyz":
                checks = run_checks(endpoint.probes)
                ready = all(c.ok for c in checks)
                lines = [f"{'ok' if c.ok else 'FAIL'} {c.name}: {c.detail}" for c in checks]
                status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
                self._send(status, ("\n".join(lines) + "\n").encode(), TEXT_PLAIN)
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", TEXT_PLAIN)

        def _send(
            self, status: HTTPStatus, body: bytes, content_type: str, realm: str | None = None
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if realm is not None:
                self.send_header("WWW-Authenticate", realm)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: a scrape every few seconds is not news."""

    return Handler


def make_server(endpoint: Endpoint, host: str, port: int) -> ThreadingHTTPServer:
    """A bound (not yet serving) server for ``endpoint``; port 0 picks a free one."""
    server = ThreadingHTTPServer((host, port), handler_for(endpoint))
    server.daemon_threads = True
    return server
