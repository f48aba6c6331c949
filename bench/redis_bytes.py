"""Redis bytes per result and per queued job, measured on a private Redis, and the projection.

``python -m bench.redis_bytes [--jobs N]`` starts its own ``redis-server`` on a free loopback
port (no persistence), then:

* writes N results through the real result backend (``TaskfleetResultBackend.store_result``,
  the same Lua script workers run: the ``celery-task-meta-<id>`` key and a persistence
  stream entry), each a ``cpu.noop`` result with Celery's extended meta and a 200-byte
  payload as its args, as the benchmarks send;
* reads ``used_memory`` before and after, and after deleting the stream (the persister
  deletes every entry it has landed, so in steady state only the keys stay), and samples
  ``MEMORY USAGE`` of the keys;
* enqueues N ``cpu.noop`` jobs with ``Client.enqueue_many`` and reads ``used_memory`` again.

It prints bytes per result, per pending stream entry and per queued job, and the Redis a
sustained rate needs with the default result TTL: ``rate x TTL x bytes per result``.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from celery.app.task import Context

from bench.chaos.servers import redis_binary
from bench.common import make_payload
from taskfleet.config.settings import DEFAULT_RESULT_EXPIRES_S
from taskfleet.devstack.common import choose_port
from taskfleet.devstack.polling import wait_until

LOOPBACK = "127.0.0.1"
DEFAULT_JOBS = 100_000
#: Keys whose ``MEMORY USAGE`` is sampled (exact per key, without the expiry table's entry).
SAMPLED_KEYS = 1_000
#: The sustained rate the projection is for (issue 17), and the Redis TTL before it (7 days).
PROJECTED_RATE = 1_000
OLD_RESULT_EXPIRES_S = 7 * 24 * 3600
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
#: Never contacted: settings need a database URL when nothing is embedded.
UNUSED_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/unused"
GB = 1e9


@contextlib.contextmanager
def private_redis(maxmemory: int = 0, policy: str = "noeviction") -> Iterator[redis.Redis]:
    """A throwaway ``redis-server`` on a free loopback port, without persistence."""
    with tempfile.TemporaryDirectory(prefix="tf-redis-") as workdir:
        port = choose_port(None, set())
        argv = [
            redis_binary(),
            "--bind", LOOPBACK,
            "--port", str(port),
            "--dir", workdir,
            "--save", "",
            "--appendonly", "no",
            "--maxmemory", str(maxmemory),
            "--maxmemory-policy", policy,
            "--logfile", str(Path(workdir) / "redis.log"),
        ]  # fmt: skip
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        client = redis.Redis(host=LOOPBACK, port=port, socket_timeout=STOP_TIMEOUT_S)
        try:
            if not wait_until(lambda: _answers(client, proc), READY_TIMEOUT_S, backoff=True):
                raise RuntimeError(f"redis-server on {LOOPBACK}:{port} did not start")
            yield client
        finally:
            client.close()
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT_S)


def _answers(client: redis.Redis, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"redis-server exited with status {proc.returncode} on start")
    with contextlib.suppress(redis.RedisError, OSError):
        return bool(client.ping())
    return False


def url_of(client: redis.Redis) -> str:
    """The ``redis://`` URL of a client made by :func:`private_redis`."""
    kwargs = client.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/0"


def make_app(redis_url: str, **overrides: Any) -> Any:
    """A taskfleet app whose broker and results are ``redis_url`` (Postgres unused)."""
    from taskfleet.app import create_app
    from taskfleet.config import load_settings

    settings = load_settings(
        broker_url=redis_url,
        redis_url=redis_url,
        database_url=UNUSED_DATABASE_URL,
        embedded=False,
        **overrides,
    )
    return create_app(settings)


def job_request(index: int) -> Context:
    """What a worker's request carries into Celery's extended result meta."""
    return Context(
        task="cpu.noop",
        args=[make_payload(index)],
        kwargs={},
        hostname=f"cpu@{socket.gethostname()}",
        retries=0,
        delivery_info={"routing_key": "cpu"},
    )


def used_memory(client: redis.Redis) -> int:
    """Redis's ``used_memory`` (bytes the allocator holds for data and overhead)."""
    return int(client.info("memory")["used_memory"])


def measure_results(client: redis.Redis, app: Any, jobs: int) -> dict[str, float]:
    """Write ``jobs`` results through the backend; bytes per result, per stream entry."""
    from taskfleet.results.stream import PERSIST_STREAM

    backend = app.backend
    before = used_memory(client)
    ids = [str(uuid.uuid4()) for _ in range(jobs)]
    for index, task_id in enumerate(ids):
        backend.store_result(task_id, {"ok": True}, "SUCCESS", request=job_request(index))
    with_stream = used_memory(client)
    client.delete(PERSIST_STREAM)  # what the persister's XACK + XDEL leaves, in the end
    keys_only = used_memory(client)
    sampled = ids[:: max(1, jobs // SAMPLED_KEYS)]
    usage = [client.memory_usage(backend.get_key_for_task(i), samples=0) or 0 for i in sampled]
    value = client.get(backend.get_key_for_task(ids[0])) or b""
    return {
        "result": (keys_only - before) / jobs,
        "stream_entry": (with_stream - keys_only) / jobs,
        "memory_usage": sum(usage) / len(usage),
        "json": len(value),
        "ttl": float(client.ttl(backend.get_key_for_task(ids[0]))),
    }


def measure_queued(client: redis.Redis, app: Any, jobs: int, keyed: bool = False) -> float:
    """Enqueue ``jobs`` ``cpu.noop`` jobs as producers do; bytes per queued job.

    ``keyed``: each with an idempotency key (a claim key per job, see ``taskfleet.claims``).
    """
    from taskfleet.client import Client, JobSpec

    client.flushall()
    before = used_memory(client)
    Client(app).enqueue_many(
        JobSpec("cpu.noop", make_payload(i), idempotency_key=f"doc-{i}" if keyed else None)
        for i in range(jobs)
    )
    return (used_memory(client) - before) / jobs


def main(argv: list[str] | None = None) -> int:
    """Measure and print the figures (see module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m bench.redis_bytes", description=__doc__)
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS, help="results and jobs")
    args = parser.parse_args(argv)
    with private_redis() as client:
        app = make_app(url_of(client))
        import taskfleet.tasks.builtin  # noqa: F401 - registers cpu.noop for the client

        results = measure_results(client, app, args.jobs)
        queued = measure_queued(client, app, args.jobs)
        keyed = measure_queued(client, app, args.jobs, keyed=True)
    per_result = results["result"]
    print(f"jobs: {args.jobs:,} (redis-server {_server_version()})")
    print(f"result JSON: {results['json']:.0f} bytes; Redis TTL {results['ttl']:.0f} s")
    print(f"bytes/result (used_memory delta, keys only): {per_result:.1f}")
    print(f"bytes/result (MEMORY USAGE, mean of sampled keys): {results['memory_usage']:.1f}")
    print(
        f"bytes/pending stream entry (until the persister lands it): {results['stream_entry']:.1f}"
    )
    print(f"bytes/queued job (enqueue_many, used_memory delta): {queued:.1f}")
    print(f"bytes/idempotency claim (keyed job minus plain job): {keyed - queued:.1f}")
    for ttl, name in ((DEFAULT_RESULT_EXPIRES_S, "default"), (OLD_RESULT_EXPIRES_S, "old default")):
        projected = PROJECTED_RATE * ttl * per_result / GB
        print(
            f"projected results at {PROJECTED_RATE:,} jobs/s, TTL {ttl:,} s ({name}): "
            f"{PROJECTED_RATE * ttl:,} results, {projected:.2f} GB"
        )
    return 0


def _server_version() -> str:
    done = subprocess.run([redis_binary(), "--version"], capture_output=True, check=False)
    return done.stdout.decode().split()[2].removeprefix("v=") if done.stdout else "?"


if __name__ == "__main__":
    raise SystemExit(main())
