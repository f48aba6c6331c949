"""Reading the persistence stream in its consumer group, without losing an entry.

A persister reads, in this order: its own pending entries (read before but not acknowledged,
after a failure), then orphans (entries a dead consumer held for longer than
``claim_idle_ms``, claimed with ``XAUTOCLAIM``), then new entries. On a busy stream each read
is one ``XREADGROUP``: own pending entries are re-read only after a failure, and orphans are
looked for at most every ``claim_interval_s`` (profiled: the extra commands per read cost
the persister half its time).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

import redis

from taskfleet.results.stream import PERSIST_GROUP, StreamEntry

DEFAULT_CLAIM_IDLE_MS = 30_000
DEFAULT_CLAIM_INTERVAL_S = 10.0


class GroupReader:
    """One consumer of ``stream`` in the persisters' group."""

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        *,
        batch_size: int,
        consumer: str | None = None,
        claim_idle_ms: int = DEFAULT_CLAIM_IDLE_MS,
        claim_interval_s: float = DEFAULT_CLAIM_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.stream = stream
        self.batch_size = batch_size
        self.consumer = consumer or f"{socket.gethostname()}:{os.getpid()}"
        self.claim_idle_ms = claim_idle_ms
        self.claim_interval_s = claim_interval_s
        self.clock = clock
        self._group_ready = False
        self._pending_clean = False
        self._last_claim = float("-inf")

    def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if missing."""
        try:
            self.client.xgroup_create(self.stream, PERSIST_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def reset(self) -> None:
        """After a failure: check the group again and re-read own pending entries first."""
        self._group_ready = False
        self._pending_clean = False

    def skip_pending(self) -> None:
        """Read new entries next although own pending ones remain (held back on purpose,
        e.g. for a shard that is down); :meth:`reset` reads them again."""
        self._pending_clean = True

    def next_batch(self, block_ms: int | None = None, *, full: bool = False) -> list[StreamEntry]:
        """Own pending entries, else orphans, else new entries (waiting up to ``block_ms``).

        ``full`` looks for own pending entries and orphans whatever the intervals say.
        """
        if not self._group_ready:
            self.ensure_group()
            self._group_ready = True
        entries: list[StreamEntry] = []
        if full or not self._pending_clean:
            entries = self._read("0", None)
            self._pending_clean = not entries
        now = self.clock()
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
        return entries

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
