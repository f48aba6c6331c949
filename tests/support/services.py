"""Real services for tests: the configured ones, else the embedded stack; RabbitMQ if reachable."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from taskfleet.devstack import EmbeddedStack, StackURLs

REPO = Path(__file__).resolve().parents[2]
#: Embedded services for tests; set TASKFLEET_TEST_STACK_DIR to give a parallel run its own.
TEST_DATA_DIR = Path(os.environ.get("TASKFLEET_TEST_STACK_DIR", REPO / ".taskfleet" / "test-stack"))
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
URL_VARS = ("TASKFLEET_BROKER_URL", "TASKFLEET_REDIS_URL", "TASKFLEET_DATABASE_URL")


def in_ci() -> bool:
    """Whether we run under CI, where a missing service is a failure, not a skip."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def missing_service(what: str, problem: str = "not reachable") -> None:
    """Skip locally, fail under CI (the skip's reason names ``what`` and the ``problem``)."""
    if in_ci():
        pytest.fail(f"{what} is required when CI is set ({problem})", pytrace=False)
    pytest.skip(f"{what} {problem}")


def reachable(url: str, timeout: float = 1.0) -> bool:
    """Whether a TCP connection to the URL's host and port succeeds."""
    parts = urlsplit(url)
    default_port = {"amqp": 5672, "redis": 6379, "postgresql": 5432}.get(parts.scheme, 0)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), timeout
        ):
            return True
    except OSError:
        return False


def service_env() -> tuple[dict[str, str], EmbeddedStack | None]:
    """URLs for Redis and Postgres: from the environment if set, else an embedded stack.

    Returns:
        The environment for workers, and the embedded stack if this call started it (the
        caller stops it when done; one that was already running is left running).
    """
    started: EmbeddedStack | None = None
    configured = {k: os.environ[k] for k in URL_VARS if os.environ.get(k)}
    redis_url = configured.get("TASKFLEET_REDIS_URL") or configured.get("TASKFLEET_BROKER_URL")
    database_url = configured.get("TASKFLEET_DATABASE_URL")
    if redis_url and redis_url.startswith("amqp"):
        redis_url = configured.get("TASKFLEET_REDIS_URL")
    if not (redis_url and database_url):
        stack = EmbeddedStack(TEST_DATA_DIR)
        started = None if stack.is_running() else stack
        urls = stack.ensure_running()
        redis_url = redis_url or urls.redis_url
        database_url = database_url or urls.database_url
    return {
        "TASKFLEET_BROKER_URL": redis_url,
        "TASKFLEET_REDIS_URL": redis_url,
        "TASKFLEET_DATABASE_URL": database_url,
        "TASKFLEET_EMBEDDED": "false",
    }, started


def amqp_url() -> str:
    """The RabbitMQ URL for broker-specific tests."""
    return os.environ.get("TASKFLEET_TEST_AMQP_URL", DEFAULT_AMQP_URL)


def delete_amqp_queues(env: dict[str, str]) -> None:
    """Delete a fleet's work and dead-letter queues on RabbitMQ (test clean-up)."""
    from kombu import Connection

    with Connection(env["TASKFLEET_BROKER_URL"]) as conn:
        channel = conn.channel()
        for base in (env["TASKFLEET_CPU_QUEUE"], env["TASKFLEET_IO_QUEUE"]):
            for name in (base, f"{base}.dlq"):
                try:
                    channel.queue_delete(name)
                except conn.channel_errors:
                    channel = conn.channel()


@contextmanager
def private_stack(data_dir: Path) -> Iterator[tuple[EmbeddedStack, StackURLs]]:
    """An embedded Redis + Postgres pair of its own, that tests may stop and restart.

    Stopped afterwards if this call started it, else left running as it was found.
    """
    stack = EmbeddedStack(data_dir)
    started_here = not stack.is_running()
    urls = stack.ensure_running()
    yield stack, urls
    if started_here:
        stack.stop()
    else:
        stack.ensure_running()


@contextmanager
def cluster_dir(name: str) -> Iterator[Path]:
    """A folder for test PostgreSQL servers, outside pytest's temporary root.

    Those servers run as an unprivileged user, which must traverse the folder's ancestors
    (``prepare_root_permissions`` opens them). Every pytest session that starts resets its
    ``pytest-of-<user>`` root to 0700, so a server under it lost its own files the moment a
    parallel lane of ``make test`` began a session (initdb: "could not open file ...
    pg_control: Permission denied").
    """
    path = Path(tempfile.mkdtemp(prefix=f"taskfleet-{name}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def on_db(url: str, db: int) -> str:
    """``url`` pointing at Redis database ``db`` (TCP: the path; a unix socket: ``?db=``)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = dict(parse_qsl(parts.query)) | {"db": str(db)}
        return urlunsplit(parts._replace(query=urlencode(query)))
    return urlunsplit(parts._replace(path=f"/{db}"))
