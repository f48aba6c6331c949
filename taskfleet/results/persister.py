"""Moves results from the Redis persistence stream into PostgreSQL in batches.

Workers write each result to Redis and append it to a stream in the same MULTI (see
``taskfleet.results.backend``). This consumer group drains the stream with multi-row upserts
and acknowledges only what Postgres committed, so a result is never lost between the two:
while Postgres is down the entries wait in the stream, and entries held by a consumer that
died are claimed by another after ``claim_idle_ms``.

The same stream is the write-behind buffer of the generic cache's L3: its entries carry
``table=cache`` and an ``op`` (see ``taskfleet.cache.l2``), are applied to ``taskfleet_cache``
in stream order with the entry id as row version, and are acknowledged in the same way.
Entries without ``table`` are results. A batch is flushed when ``batch_size`` entries are
waiting or after ``block_ms``, and once more on shutdown.

A row Postgres refuses never blocks the stream (:mod:`taskfleet.results.landing`): the batch is
bisected so the other rows land in the same cycle, JSON that jsonb refuses is stored as
text, and what cannot be stored at all is quarantined (:mod:`taskfleet.results.quarantine`),
logged once and acknowledged. Errors that are not about a row (Postgres down, restarting)
are retried with exponential backoff (tenacity) and lose nothing; meanwhile the stream's
length and age are logged and it is held under its cap (:mod:`taskfleet.results.backlog`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Sequence

import redis
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_when_event_set,
    wait_exponential_jitter,
)

from taskfleet.cache.l3 import purge_expired
from taskfleet.config.cache import (
    DEFAULT_PERSIST_MAX_BYTES,
    DEFAULT_PERSIST_MAX_RETRY_DELAY_S,
    DEFAULT_PERSIST_STREAM_MAXLEN,
)
from taskfleet.observability.tracing import (
    ensure_provider,
    flush_spans,
    persist_span,
    tracing_enabled,
)
from taskfleet.results.backlog import (
    BacklogGuard,
    StreamHealth,
    forget_idle_consumers,
    stream_health,
)
from taskfleet.results.batch import write_batch
from taskfleet.results.group_reader import (
    DEFAULT_CLAIM_IDLE_MS,
    DEFAULT_CLAIM_INTERVAL_S,
    GroupReader,
)
from taskfleet.results.quarantine import QUARANTINE_KEY, Quarantine
from taskfleet.results.store import ensure_schema, purge_expired_results
from taskfleet.results.stream import PERSIST_GROUP, PERSIST_STREAM, StreamEntry
from taskfleet.workers.persister_watch import BEAT_INTERVAL_S, HEARTBEAT_FILE_ENV, Heartbeat

DEFAULT_BATCH_SIZE = 500
DEFAULT_BLOCK_MS = 100
DEFAULT_RETRY_DELAY_S = 1.0
DEFAULT_LINGER_S = 0.05
PARENT_CHECK_INTERVAL_S = 0.5
DEFAULT_PURGE_INTERVAL_S = 300.0
#: Errors the persister retries (with backoff) rather than dying on.
RETRIED_ERRORS = (redis.RedisError, SQLAlchemyError, OSError)
#: Recent retry delays kept for inspection (tests, debugging).
RETRY_DELAYS_KEPT = 32
#: While retrying, a warning on attempts 1, 2, 4, 8... and at least this often.
RETRY_LOG_INTERVAL_S = 300.0

log = logging.getLogger(__name__)


class ResultPersister:
    """One consumer of the persistence stream; run :meth:`drain` or :meth:`start` a thread."""

    def __init__(
        self,
        client: redis.Redis,
        engine: Engine,
        *,
        consumer: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        block_ms: int = DEFAULT_BLOCK_MS,
        claim_idle_ms: int = DEFAULT_CLAIM_IDLE_MS,
        retry_delay_s: float = DEFAULT_RETRY_DELAY_S,
        stream: str = PERSIST_STREAM,
        purge_interval_s: float = DEFAULT_PURGE_INTERVAL_S,
        claim_interval_s: float = DEFAULT_CLAIM_INTERVAL_S,
        linger_s: float = DEFAULT_LINGER_S,
        max_bytes: int = DEFAULT_PERSIST_MAX_BYTES,
        stream_maxlen: int = DEFAULT_PERSIST_STREAM_MAXLEN,
        max_retry_delay_s: float = DEFAULT_PERSIST_MAX_RETRY_DELAY_S,
        quarantine_key: str = QUARANTINE_KEY,
    ) -> None:
        """Consume ``stream`` with ``client`` into ``engine``.

        Args:
            client: Redis holding the stream (and the quarantine).
            engine: Postgres.
            consumer: this consumer's name in the group (default host:pid).
            batch_size: entries per batch.
            block_ms: how long a read waits for new entries.
            claim_idle_ms: idle time after which another consumer's entries are claimed.
            retry_delay_s: first wait after an error; doubles up to ``max_retry_delay_s``.
            stream: the persistence stream.
            purge_interval_s: how often expired rows are purged.
            claim_interval_s: how often orphaned entries are looked for.
            linger_s: pause after a short batch, so the next one builds up.
            max_bytes: larger results are quarantined (``TASKFLEET_CACHE_PERSIST_MAX_BYTES``).
            stream_maxlen: the stream's cap (``TASKFLEET_CACHE_PERSIST_STREAM_MAXLEN``).
            max_retry_delay_s: the longest wait between retries.
            quarantine_key: the Redis hash of quarantined entries.
        """
        self.stream = stream
        self.purge_interval_s = purge_interval_s
        self._last_purge = time.monotonic()
        #: Touched every loop turn and retry, for the worker's watch (:func:`serve` sets it).
        self.heartbeat = Heartbeat(None)
        self.client = client
        self.engine = engine
        self.reader = GroupReader(
            client,
            stream,
            batch_size=batch_size,
            consumer=consumer,
            claim_idle_ms=claim_idle_ms,
            claim_interval_s=claim_interval_s,
        )
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.retry_delay_s = retry_delay_s
        self.linger_s = linger_s
        self.max_bytes = max_bytes
        self.stream_maxlen = stream_maxlen
        self.max_retry_delay_s = max_retry_delay_s
        self.quarantine = Quarantine(client, quarantine_key)
        #: Whether batches are traced (:mod:`taskfleet.observability.tracing`).
        self.tracing = False
        self.written = 0
        self.quarantined = 0
        self.stored_as_text = 0
        self.retry_delays: deque[float] = deque(maxlen=RETRY_DELAYS_KEPT)
        self._last_retry_log = float("-inf")
        self._guard = BacklogGuard(client, stream, PERSIST_GROUP, stream_maxlen, self.quarantine)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._schema_ready = False

    def _write(self, entries: Sequence[StreamEntry]) -> int:
        if not entries:
            return 0
        self._ensure_schema()
        outcome = write_batch(self.engine, entries, self.max_bytes, self.quarantine)
        ids = [entry_id for entry_id, _ in entries]
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(self.stream, PERSIST_GROUP, *ids)
        pipe.xdel(self.stream, *ids)
        pipe.execute()
        self.written += outcome.written
        self.stored_as_text += outcome.as_text
        self.quarantined += outcome.quarantined
        return len(entries)

    def step(self, block_ms: int | None = None, *, full: bool = False) -> int:
        """Write one batch (see :meth:`GroupReader.next_batch` for which entries)."""
        entries = self.reader.next_batch(block_ms, full=full)
        with persist_span(self.tracing, entries):
            return self._write(entries)

    def drain(self) -> int:
        """Write everything currently in the stream; return how many rows were written."""
        total = self.step(full=True)
        while (written := self.step()) > 0:
            total += written
        return total

    def backlog(self) -> int:
        """Entries not yet written to Postgres."""
        return int(self.client.xlen(self.stream))

    def health(self) -> StreamHealth:
        """The stream's length, pending entries and their ages (see ``taskfleet.results.backlog``)."""
        return stream_health(self.client, self.stream, PERSIST_GROUP, self.stream_maxlen)

    def check_backlog(self, *, force: bool = False) -> StreamHealth | None:
        """Warn near the stream's cap, quarantine what is over it (see ``BacklogGuard``)."""
        health, moved = self._guard.check(force=force)
        self.quarantined += moved
        return health

    def _cycle(self) -> None:
        self.heartbeat.beat()
        if self.step(block_ms=self.block_ms) < self.batch_size:
            # Let a batch build up rather than paying a round of commands and a
            # transaction for a handful of rows.
            self._stop.wait(self.linger_s)
        if time.monotonic() - self._last_purge >= self.purge_interval_s:
            self._last_purge = time.monotonic()
            self._purge()
            forget_idle_consumers(self.client, self.stream, PERSIST_GROUP)
        self.check_backlog()

    def _ensure_schema(self) -> None:
        if not self._schema_ready:
            ensure_schema(self.engine)
            self._schema_ready = True

    def _purge(self) -> None:
        """Delete expired cache rows and old tombstones, and results past their retention
        (the tables are created first: a fleet that has stored nothing yet has none)."""
        self._ensure_schema()
        purge_expired(self.engine)
        purge_expired_results(self.engine)

    def _before_retry(self, state: RetryCallState) -> None:
        self.heartbeat.beat()  # alive, waiting for a service: not stuck
        self._schema_ready = False
        self.reader.reset()
        delay = state.upcoming_sleep
        self.retry_delays.append(delay)
        attempt = state.attempt_number
        now = time.monotonic()
        if attempt & (attempt - 1) == 0 or now - self._last_retry_log >= RETRY_LOG_INTERVAL_S:
            self._last_retry_log = now
            exc = state.outcome.exception() if state.outcome else None
            problem = (str(exc).strip().splitlines() or ["?"])[0]
            try:
                backlog = self.check_backlog(force=True)
            except RETRIED_ERRORS:
                backlog = None
            log.warning(
                "result persister: %s: %s; retry %d in %.1fs%s",
                type(exc).__name__,
                problem,
                attempt,
                delay,
                f" ({backlog.describe()})" if backlog else "",
            )
        else:
            with contextlib.suppress(*RETRIED_ERRORS):
                self.check_backlog()

    def _sleep(self, seconds: float) -> None:
        """Wait between retries, beating the heartbeat (a long wait is not a stall)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not self._stop.wait(
            min(left, BEAT_INTERVAL_S)
        ):
            self.heartbeat.beat()

    def _run(self) -> None:
        retrying = Retrying(
            retry=retry_if_exception_type(RETRIED_ERRORS),
            wait=wait_exponential_jitter(
                multiplier=self.retry_delay_s,
                max=self.max_retry_delay_s,
                jitter=self.retry_delay_s / 2,
            ),
            stop=stop_when_event_set(self._stop),
            sleep=self._sleep,
            before_sleep=self._before_retry,
            reraise=True,
        )
        while not self._stop.is_set():
            try:
                retrying(self._cycle)
            except RETRIED_ERRORS:  # stopped while retrying: stop() makes a last attempt
                return

    def start(self) -> None:
        """Run in a daemon thread until :meth:`stop`."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="taskfleet-persister", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread, then write what is left (best effort; the rest stays in the stream)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        try:
            self.drain()
        except (redis.RedisError, SQLAlchemyError, OSError) as exc:
            log.warning(
                "result persister: final drain failed (%s); entries stay in the stream", exc
            )


def run_forever(parent_pid: int | None = None) -> None:
    """Process entry point: drain until SIGTERM/SIGINT or until ``parent_pid`` is gone."""
    from taskfleet.config import get_settings
    from taskfleet.config.cache import load_cache_settings
    from taskfleet.workers.heap import settle_heap
    from taskfleet.workers.resources import open_resources

    settings = get_settings()
    cache_settings = load_cache_settings()
    resources = open_resources(settings)
    persister = ResultPersister(
        resources.redis,
        resources.engine,
        max_bytes=cache_settings.persist_max_bytes,
        stream_maxlen=cache_settings.persist_stream_maxlen,
        max_retry_delay_s=cache_settings.persist_max_retry_delay,
    )
    settle_heap(settings.settle_heap)
    serve(persister, parent_pid, "result persister")


def serve(persister: ResultPersister, parent_pid: int | None, name: str) -> None:
    """Run ``persister`` until SIGTERM/SIGINT or until ``parent_pid`` is gone, then stop it."""
    import signal

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    persister.heartbeat = Heartbeat(os.environ.get(HEARTBEAT_FILE_ENV))
    persister.tracing = tracing_enabled()
    if persister.tracing:
        ensure_provider("persister")
    persister.start()
    while not stop.wait(PARENT_CHECK_INTERVAL_S):
        if parent_pid is not None and os.getppid() != parent_pid:
            log.warning("%s: worker %s is gone; stopping", name, parent_pid)
            break
    persister.stop()
    if persister.tracing:
        flush_spans()


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s persister %(levelname)s %(message)s"
    )
    run_forever(os.getppid())
