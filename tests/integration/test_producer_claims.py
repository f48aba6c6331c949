"""Idempotency claims a producer crash cannot strand, and concurrent duplicates sent once.

A producer subprocess is stopped at the seam between claim and publish
(``Client._before_publish``), then SIGKILLed there; a retry must still get its job run.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from kombu import Connection

from taskfleet.app import create_app
from taskfleet.claims import PENDING_PREFIX, claim_key
from taskfleet.client import Client
from taskfleet.config import load_settings
from taskfleet.routing.depth import (
    amqp_queue_depths,
    redis_priority_key,
    redis_priority_keys,
    redis_queue_depths,
)
from taskfleet.routing.priority import parse_priority
from taskfleet.routing.wire import job_id_for
from tests.support.waiting import wait_for
from tests.support.workers import Fleet

JOB_TIMEOUT_S = 30.0
PROCESS_TIMEOUT_S = 30.0
SHORT_WINDOW_S = 2.0
DUPLICATES = 8

#: A producer that reports "claimed" at the seam and waits there for a line on stdin.
PRODUCER = """
import sys
from taskfleet.app import create_app
from taskfleet.client import Client
from taskfleet.config import load_settings

class Stalling(Client):
    claim_window_s = float(sys.argv[3])

    def _before_publish(self, job_ids):
        print("claimed", flush=True)
        sys.stdin.readline()

client = Stalling(create_app(load_settings()))
handle = client.enqueue(sys.argv[1], {"rounds": 1}, idempotency_key=sys.argv[2])
print("published", handle.id, handle.deduplicated, flush=True)
"""


class Producer:
    """A producer subprocess stopped between claim and publish."""

    def __init__(self, env: dict[str, str], kind: str, key: str, window_s: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PRODUCER, kind, key, str(window_s)],
            env={**os.environ, **env},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def expect(self, prefix: str) -> str:
        """The next line the producer prints, which must start with ``prefix``."""
        line = wait_for(self._next, PROCESS_TIMEOUT_S, f"producer to say {prefix!r}")
        assert line is not None
        assert line.startswith(prefix), line
        return line

    def _next(self) -> str | None:
        try:
            return self.lines.get_nowait()
        except queue.Empty:
            if self.proc.poll() is not None:
                raise AssertionError(f"producer exited with {self.proc.returncode}") from None
            return None

    def release(self) -> None:
        """Let it publish."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        """Crash it where it stands."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(PROCESS_TIMEOUT_S)


@contextmanager
def producer(env: dict[str, str], kind: str, key: str, window_s: float) -> Iterator[Producer]:
    """A :class:`Producer`, killed at the end whatever happened."""
    proc = Producer(env, kind, key, window_s)
    try:
        yield proc
    finally:
        if proc.proc.poll() is None:
            proc.kill()


def _idle_env(env: dict[str, str]) -> dict[str, str]:
    """Queues of this test's own that no worker consumes."""
    suffix = f"claims-{uuid.uuid4().hex[:6]}"
    return {
        **env,
        "TASKFLEET_CPU_QUEUE": f"{env['TASKFLEET_CPU_QUEUE']}-{suffix}",
        "TASKFLEET_IO_QUEUE": f"{env['TASKFLEET_IO_QUEUE']}-{suffix}",
    }


def _client(env: dict[str, str]) -> Client:
    overrides = {k.removeprefix("TASKFLEET_").lower(): v for k, v in env.items()}
    return Client(create_app(load_settings(**overrides)))


def _all_at_once(count: int, call: Callable[[], Any]) -> list[Any]:
    """``call`` from ``count`` threads released together; their results."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(at: int) -> None:
        barrier.wait()
        results[at] = call()

    threads = [threading.Thread(target=run, args=(at,)) for at in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PROCESS_TIMEOUT_S)
    assert not any(t.is_alive() for t in threads)
    return results


# -- Redis: claim and publish are one script ---------------------------------------------------
@pytest.fixture
def redis_idle(redis_env: dict[str, str], redis_client: redis.Redis) -> Iterator[Client]:
    """A client on Redis queues no worker consumes."""
    client = _client(_idle_env(redis_env))
    yield client
    for name in (client.topology.cpu_queue, client.topology.io_queue):
        redis_client.delete(*redis_priority_keys(name))
    client.close()


def _redis_depth(client: Client, redis_client: redis.Redis) -> int:
    names = [client.topology.cpu_queue, client.topology.io_queue]
    return sum(redis_queue_depths(redis_client, names).values())


def test_redis_crash_before_the_script_leaves_no_claim(
    redis_fleet: Fleet, redis_client: redis.Redis
) -> None:
    key = f"crash-{uuid.uuid4().hex}"
    client = Client(redis_fleet.app())
    with producer(redis_fleet.env, "cpu.checksum", key, SHORT_WINDOW_S) as proc:
        proc.expect("claimed")
        proc.kill()
    job_id = job_id_for("cpu.checksum", key)
    assert redis_client.get(claim_key(job_id)) is None
    retry = client.enqueue("cpu.checksum", {"rounds": 1}, idempotency_key=key)
    assert (retry.id, retry.deduplicated) == (job_id, False)
    assert retry.result(JOB_TIMEOUT_S)["rounds"] == 1
    assert client.enqueue("cpu.checksum", {"rounds": 1}, idempotency_key=key).deduplicated


def test_redis_failed_push_claims_nothing(redis_idle: Client, redis_client: redis.Redis) -> None:
    """The script pushes before it claims: a push that fails midway leaves no marker."""
    key = f"wrongtype-{uuid.uuid4().hex}"
    blocker = redis_priority_key(redis_idle.topology.cpu_queue, parse_priority(None))
    redis_client.set(blocker, "not a list")  # LPUSH onto it fails with WRONGTYPE
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        redis_idle.enqueue("cpu.noop", 1, idempotency_key=key)
    assert redis_client.get(claim_key(job_id_for("cpu.noop", key))) is None
    redis_client.delete(blocker)
    assert not redis_idle.enqueue("cpu.noop", 1, idempotency_key=key).deduplicated
    assert _redis_depth(redis_idle, redis_client) == 1


def test_redis_concurrent_duplicates_publish_one_job(
    redis_idle: Client, redis_client: redis.Redis
) -> None:
    key = f"dup-{uuid.uuid4().hex}"
    singles = _all_at_once(
        DUPLICATES, lambda: redis_idle.enqueue("cpu.noop", 1, idempotency_key=key)
    )
    batches = _all_at_once(
        DUPLICATES,
        lambda: redis_idle.enqueue_many([{"kind": "cpu.noop", "idempotency_key": key}] * 3),
    )
    handles = singles + [h for batch in batches for h in batch]
    assert len({h.id for h in handles}) == 1
    assert sum(not h.deduplicated for h in handles) == 1
    assert _redis_depth(redis_idle, redis_client) == 1


# -- RabbitMQ: a short claim, confirmed after the commit ---------------------------------------


@pytest.fixture
def amqp_idle(amqp_env: dict[str, str]) -> Iterator[tuple[Client, dict[str, str]]]:
    """A client (and its environment) on RabbitMQ queues no worker consumes."""
    env = _idle_env(amqp_env)
    client = _client(env)
    yield client, env
    client.close()
    with Connection(env["TASKFLEET_BROKER_URL"]) as conn:
        channel = conn.channel()
        for name in (client.topology.cpu_queue, client.topology.io_queue):
            for each in (name, client.topology.dlq_for(name)):
                channel.queue_delete(each)


def _amqp_depth(client: Client, url: str) -> int:
    with Connection(url) as conn:
        return amqp_queue_depths(conn, [client.topology.cpu_queue])[client.topology.cpu_queue]


@pytest.mark.rabbitmq
def test_amqp_crash_between_claim_and_publish_expires(
    amqp_fleet: Fleet, redis_client: redis.Redis
) -> None:
    key = f"crash-{uuid.uuid4().hex}"
    job_id = job_id_for("cpu.checksum", key)
    client = Client(amqp_fleet.app())
    with producer(amqp_fleet.env, "cpu.checksum", key, SHORT_WINDOW_S) as proc:
        proc.expect("claimed")
        pending = redis_client.get(claim_key(job_id))
        assert isinstance(pending, bytes)
        assert pending.decode().startswith(PENDING_PREFIX)
        assert 0 < redis_client.pttl(claim_key(job_id)) <= SHORT_WINDOW_S * 1000
        proc.kill()  # dies holding the claim; nothing was published
    retry = client.enqueue("cpu.checksum", {"rounds": 1}, idempotency_key=key)
    assert (retry.id, retry.deduplicated) == (job_id, False)
    assert retry.result(JOB_TIMEOUT_S)["rounds"] == 1
    assert redis_client.get(claim_key(job_id)) == b"cpu.checksum"
    assert redis_client.ttl(claim_key(job_id)) > SHORT_WINDOW_S
    assert client.enqueue("cpu.checksum", {"rounds": 1}, idempotency_key=key).deduplicated


@pytest.mark.rabbitmq
def test_amqp_retry_during_a_pending_claim_waits_for_it(
    amqp_idle: tuple[Client, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, env = amqp_idle
    key = f"inflight-{uuid.uuid4().hex}"
    waiting = threading.Event()
    real_time = time

    class Clock:  # taskfleet.claims' view of ``time``: notes when a caller starts waiting
        monotonic = staticmethod(real_time.monotonic)

        @staticmethod
        def sleep(seconds: float) -> None:
            waiting.set()
            real_time.sleep(seconds)

    monkeypatch.setattr("taskfleet.claims.time", Clock)
    results: list[Any] = []
    with producer(env, "cpu.noop", key, PROCESS_TIMEOUT_S) as proc:
        proc.expect("claimed")
        retry = threading.Thread(
            target=lambda: results.append(client.enqueue("cpu.noop", 1, idempotency_key=key))
        )
        retry.start()
        wait_for(waiting.is_set, PROCESS_TIMEOUT_S, "the retry to wait on the pending claim")
        assert _amqp_depth(client, env["TASKFLEET_BROKER_URL"]) == 0
        proc.release()
        first = proc.expect("published")
        retry.join(PROCESS_TIMEOUT_S)
    assert not retry.is_alive()
    assert first.split()[1:] == [results[0].id, "False"]
    assert results[0].deduplicated
    assert _amqp_depth(client, env["TASKFLEET_BROKER_URL"]) == 1


@pytest.mark.rabbitmq
def test_amqp_concurrent_duplicates_publish_one_job(
    amqp_idle: tuple[Client, dict[str, str]],
) -> None:
    client, env = amqp_idle
    key = f"dup-{uuid.uuid4().hex}"
    singles = _all_at_once(DUPLICATES, lambda: client.enqueue("cpu.noop", 1, idempotency_key=key))
    batches = _all_at_once(
        DUPLICATES,
        lambda: client.enqueue_many([{"kind": "cpu.noop", "idempotency_key": key}] * 3),
    )
    handles = singles + [h for batch in batches for h in batch]
    assert len({h.id for h in handles}) == 1
    assert sum(not h.deduplicated for h in handles) == 1
    assert _amqp_depth(client, env["TASKFLEET_BROKER_URL"]) == 1
