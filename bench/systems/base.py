"""The shape every system has, so each workload drives all of them the same way."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import redis

from bench.common import (
    RESULT_CHECK_CHUNK,
    WARMUP_JOBS,
    WORKER_READY_TIMEOUT_S,
    BenchTimeout,
    poll_until,
)
from bench.procs import WorkerGroup

EnqueueMode = Literal["loop", "batch"]


@dataclass(frozen=True)
class EnqueueVariant:
    """One way a system publishes jobs (for W2)."""

    label: str
    mode: EnqueueMode
    publish: Callable[[int], object]


class System(ABC):
    """A job system under test: workers, a producer, and a way to see results.

    Subclasses implement the producer side (:meth:`publish`, :meth:`publish_one`), the
    worker command lines (:meth:`_spawn_workers`) and :meth:`done_flags`.
    """

    name: str = ""
    label: str = ""
    #: Whether each job's result can be observed (W3 needs it).
    per_job_results: bool = True
    #: How W2 labels a loop of :meth:`publish_one`.
    loop_label: str = "loop"

    def __init__(self) -> None:
        """Create the system; nothing runs until :meth:`start_workers`."""
        self.workers = WorkerGroup(self.name)

    # -- lifecycle ---------------------------------------------------------------------------
    @abstractmethod
    def reset(self) -> None:
        """Forget everything from a previous run (FLUSHDB, TRUNCATE)."""

    @abstractmethod
    def _spawn_workers(self, n_procs: int) -> None:
        """Start worker subprocesses through ``self.workers``."""

    def start_workers(self, n_procs: int) -> None:
        """Start ``n_procs`` worker processes and wait until a warm-up batch went through.

        Args:
            n_procs: Worker processes.

        Raises:
            BenchTimeout: The workers did not finish the warm-up in time.
        """
        self._spawn_workers(n_procs)
        keys = self.publish(WARMUP_JOBS)
        self.wait_all(keys, WORKER_READY_TIMEOUT_S)
        self.after_warmup()

    def after_warmup(self) -> None:  # noqa: B027 - optional hook
        """Hook run once the warm-up batch is done (reset counters...)."""

    def stop(self) -> None:
        """Stop the workers (always safe to call)."""
        self.workers.stop()

    def peak_rss_bytes(self) -> int:
        """Peak RSS summed over the worker process trees."""
        return self.workers.peak_rss_bytes()

    # -- producing ---------------------------------------------------------------------------
    @abstractmethod
    def publish(self, n: int) -> list[Any]:
        """Publish ``n`` no-op jobs the system's fastest way; return what :meth:`done_flags` takes.

        Args:
            n: Number of jobs.
        """

    @abstractmethod
    def publish_one(self, index: int) -> Any:
        """Publish one job; return what :meth:`done_flags` takes.

        Args:
            index: Job number.
        """

    def enqueue_variants(self) -> list[EnqueueVariant]:
        """Ways to publish measured by W2 (default: a loop of :meth:`publish_one`)."""
        return [EnqueueVariant(self.loop_label, "loop", self._loop)]

    def _loop(self, n: int) -> list[Any]:
        return [self.publish_one(i) for i in range(n)]

    # -- observing ---------------------------------------------------------------------------
    @abstractmethod
    def done_flags(self, keys: Sequence[Any]) -> list[bool]:
        """Whether each job's result is readable (one round trip).

        Args:
            keys: Values returned by :meth:`publish` / :meth:`publish_one`.
        """

    def wait_all(self, keys: Sequence[Any], timeout: float) -> None:
        """Wait until every job's result is readable.

        Args:
            keys: Values returned by :meth:`publish`.
            timeout: Seconds.

        Raises:
            BenchTimeout: Not all results appeared in time.
        """
        pending = list(keys)

        def check() -> bool:
            nonlocal pending
            while pending:
                head = pending[:RESULT_CHECK_CHUNK]
                flags = self.done_flags(head)
                first_missing = next((i for i, ok in enumerate(flags) if not ok), None)
                if first_missing is None:
                    pending = pending[len(head) :]
                    continue
                pending = [k for k, ok in zip(head, flags, strict=True) if not ok] + pending[
                    len(head) :
                ]
                self.workers.check_alive()
                return False
            return True

        try:
            poll_until(check, timeout, f"{len(keys)} {self.name} results")
        except BenchTimeout as exc:
            raise BenchTimeout(f"{exc} ({len(pending)} still missing)") from None

    def extra_after_drain(self, n: int, started: float) -> dict[str, float]:
        """Extra figures once all results are readable (e.g. durable copies); default none.

        Args:
            n: Jobs in the measured batch.
            started: ``time.perf_counter()`` when publishing began.
        """
        del n, started
        return {}


class RedisKeySystem(System):
    """A system whose results are Redis keys: done means the key exists.

    ``done_event`` names the Redis keyspace-event class and event its result write raises
    (``CONFIG SET notify-keyspace-events``), so W3 can be told of each result instead of
    polling for it.
    """

    done_event: tuple[str, str] | None = None

    def __init__(self) -> None:
        """Create the system and its result-checking Redis client lazily."""
        super().__init__()
        self._results: redis.Redis | None = None

    @property
    @abstractmethod
    def result_url(self) -> str:
        """Redis URL (with database) holding the results."""

    @property
    def results(self) -> redis.Redis:
        """Client for reading result keys."""
        if self._results is None:
            self._results = redis.Redis.from_url(self.result_url)
        return self._results

    def result_key(self, key: Any) -> str:
        """The Redis key holding the result of the job :meth:`publish` returned ``key`` for."""
        return str(key)

    def done_flags(self, keys: Sequence[Any]) -> list[bool]:
        """Pipelined EXISTS of each result key."""
        pipe = self.results.pipeline(transaction=False)
        for key in keys:
            pipe.exists(self.result_key(key))
        return [bool(x) for x in pipe.execute()]


def elapsed_since(started: float) -> float:
    """Seconds since ``started`` (a ``time.perf_counter()`` value)."""
    return time.perf_counter() - started
