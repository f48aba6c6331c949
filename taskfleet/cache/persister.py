"""Moves results from the Redis persistence stream into PostgreSQL in batches.

Workers write each result to Redis and append it to a stream in the same MULTI (see
``taskfleet.cache.backend``). This consumer group drains the stream with multi-row upserts
and acknowledges only what Postgres committed, so a result is never lost between the two:
while Postgres is down the entries wait in the stream, and entries held by a consumer that
died are claimed by another after ``claim_idle_ms``.

The same stream is the write-behind buffer of the generic cache's L3: its entries carry
``table=cache`` and an ``op`` (see ``taskfleet.cache.l2``), are applied to ``taskfleet_cache``
in stream order with the entry id as row version, and are acknowledged in the same way.
Entries without ``table`` are results. A batch is flushed when ``batch_size`` entries are
waiting or after ``block_ms``, and once more on shutdown.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from taskfleet.cache.l3 import CacheOp, apply_ops, purge_expired
from taskfleet.cache.store import ResultRow, ensure_schema, upsert_results

PERSIST_STREAM = "taskfleet:results:persist"
PERSIST_GROUP = "taskfleet-persisters"
DEFAULT_BATCH_SIZE = 500
DEFAULT_BLOCK_MS = 100
DEFAULT_CLAIM_IDLE_MS = 30_000
DEFAULT_RETRY_DELAY_S = 1.0
DEFAULT_CLAIM_INTERVAL_S = 10.0
DEFAULT_LINGER_S = 0.05
PARENT_CHECK_INTERVAL_S = 0.5
DEFAULT_PURGE_INTERVAL_S = 300.0
CACHE_TABLE = b"cache"

log = logging.getLogger(__name__)
StreamEntry = tuple[bytes, dict[bytes, bytes]]


def _decode(entry: StreamEntry) -> ResultRow | CacheOp | None:
    entry_id, fields = entry
    try:
        if fields.get(b"table") == CACHE_TABLE:
            ms, _, seq = entry_id.decode().partition("-")
            raw = fields.get(b"value")
            return CacheOp(
                op=fields[b"op"].decode(),
                key=fields[b"key"].decode(),
                value=raw.decode() if raw is not None else None,
                expires_in=float(fields.get(b"expires") or 0),
                version=(int(ms), int(seq or 0)),
            )
        key = fields[b"key"].decode()
        value = fields[b"value"].decode()
        expires = float(fields[b"expires"]) if fields.get(b"expires") else None
    except (KeyError, ValueError, UnicodeDecodeError):
        log.error("dropping malformed persistence entry %r", entry[0])
        return None
    return ResultRow(key=key, value=value, expires_in=expires)


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
    ) -> None:
        self.stream = stream
        self.purge_interval_s = purge_interval_s
        self._last_purge = time.monotonic()
        self.client = client
        self.engine = engine
        self.consumer = consumer or f"{socket.gethostname()}:{os.getpid()}"
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.retry_delay_s = retry_delay_s
        self.claim_interval_s = claim_interval_s
        self.linger_s = linger_s
        self.written = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._schema_ready = False
        self._group_ready = False
        self._pending_clean = False
        self._last_claim = float("-inf")

    def ensure_group(self) -> None:
        """Create the stream's consumer group (and the stream) if missing."""
        try:
            self.client.xgroup_create(self.stream, PERSIST_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _write(self, entries: Sequence[StreamEntry]) -> int:
        if not entries:
            return 0
        if not self._schema_ready:
            ensure_schema(self.engine)
            self._schema_ready = True
        decoded = [row for row in map(_decode, entries) if row is not None]
        rows = [r for r in decoded if isinstance(r, ResultRow)]
        ops = [r for r in decoded if isinstance(r, CacheOp)]
        upsert_results(self.engine, rows)
        apply_ops(self.engine, ops)
        ids = [entry_id for entry_id, _ in entries]
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(self.stream, PERSIST_GROUP, *ids)
        pipe.xdel(self.stream, *ids)
        pipe.execute()
        self.written += len(decoded)
        return len(entries)

    def _read(self, start: str, block_ms: int | None) -> list[StreamEntry]:
        reply: Any = self.client.xreadgroup(
            PERSIST_GROUP,
            self.consumer,
            {self.stream: start},
            count=self.batch_size,
            block=block_ms,
        )
        if not reply:
            return []
        _, entries = reply[0]
        return [e for e in entries if e[1]]  # deleted entries come back with no fields

    def step(self, block_ms: int | None = None, *, full: bool = False) -> int:
        """Write one batch: own pending first, then orphans of dead consumers, then new entries.

        Own pending entries are re-read only after a failure (or when ``full``), and orphans
        are claimed at most every ``claim_interval_s``: on a busy stream each step is then
        one XREADGROUP, one upsert and one XACK+XDEL (profiled: the extra commands per step
        cost the persister half its time).
        """
        if not self._group_ready:
            self.ensure_group()
            self._group_ready = True
        entries: list[StreamEntry] = []
        if full or not self._pending_clean:
            entries = self._read("0", None)
            self._pending_clean = not entries
        now = time.monotonic()
        if not entries and (full or now - self._last_claim >= self.claim_interval_s):
            self._last_claim = now
            _, claimed, *_ = self.client.xautoclaim(
                self.stream,
                PERSIST_GROUP,
                self.consumer,
                self.claim_idle_ms,
                count=self.batch_size,
            )
            entries = [e for e in claimed if e[1]]
            if entries:
                self._pending_clean = False
        if not entries:
            entries = self._read(">", block_ms)
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

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.step(block_ms=self.block_ms) < self.batch_size:
                    # Let a batch build up rather than paying a round of commands and a
                    # transaction for a handful of rows.
                    self._stop.wait(self.linger_s)
                if time.monotonic() - self._last_purge >= self.purge_interval_s:
                    self._last_purge = time.monotonic()
                    purge_expired(self.engine)
            except (redis.RedisError, SQLAlchemyError, OSError) as exc:
                log.warning("result persister: %s; retrying in %.1fs", exc, self.retry_delay_s)
                self._schema_ready = False
                self._group_ready = False
                self._pending_clean = False
                self._stop.wait(self.retry_delay_s)

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
    import signal

    from taskfleet.app import app, settings_of
    from taskfleet.workers.heap import settle_heap
    from taskfleet.workers.resources import open_resources

    settings = settings_of(app)
    resources = open_resources(settings)
    persister = ResultPersister(resources.redis, resources.engine)
    settle_heap(settings.settle_heap)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    persister.start()
    while not stop.wait(PARENT_CHECK_INTERVAL_S):
        if parent_pid is not None and os.getppid() != parent_pid:
            log.warning("result persister: worker %s is gone; stopping", parent_pid)
            break
    persister.stop()


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s persister %(levelname)s %(message)s"
    )
    run_forever(os.getppid())
