"""Result writes that do not wait for Redis's answer: a job's process moves on at once.

A prefork pool process that stores a result with a plain round trip sits idle until Redis
answers, and on a busy host that wait (Redis must be scheduled, then the process again) is
longer than a short job itself. The process cannot take its next job in the meantime, so
the wait caps how many jobs per second a pool of N processes finishes. Here the write is
sent and the process reports the job done; the answer is read before the next write, or by
an idle check ``IDLE_CONFIRM_S`` later, or when the process stops.

Nothing is lost on the way: a write counts as done only once Redis has answered it. An
error answer (say READONLY after a failover, or NOSCRIPT after a script flush) or a broken
connection sends every unconfirmed write again through ``store_now``, the backend's
synchronous store with its retry policy. Sending one again is harmless: the store script
never replaces a SUCCESS, and the persister upserts. The write is sent before the job is
reported done, so it leaves the process before the job's ack does; if the process dies
after sending it, Redis still reads what reached its socket.

The raw connection and its owed replies: :mod:`taskfleet.results.late_replies`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from taskfleet.results.late_replies import LINK_ERRORS, LateReplies, packed

log = logging.getLogger(__name__)

#: Unconfirmed writes are checked this long after the last one when no other write comes.
IDLE_CONFIRM_S = 0.05

Write = tuple[list[str], list[Any]]
StoreNow = Callable[[list[str], list[Any]], None]


class PipelinedScript:
    """Sends a Lua script's calls without waiting; confirms them later (see module doc)."""

    def __init__(
        self,
        client: redis.Redis,
        script: str,
        store_now: StoreNow,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock``: what the idle check measures "since the last write" with (tests inject
        one that stands still, so that check never runs on its own)."""
        self.clock = clock
        self._sha: str = client.script_load(script)
        self._store_now = store_now
        self._writes = LateReplies(client.connection_pool)
        self._unconfirmed: list[Write] = []
        self._last_send = 0.0
        self._lock = threading.Lock()
        self._has_unconfirmed = threading.Event()
        self._closed = False
        threading.Thread(target=self._confirm_when_idle, name="result-confirm", daemon=True).start()

    def send(self, keys: list[str], args: list[Any]) -> None:
        """Send one call; earlier calls are confirmed first (their replies are long in)."""
        with self._lock:
            self._confirm()
            command = ("EVALSHA", self._sha, len(keys), *keys, *args)
            try:
                self._writes.send([packed([command])], replies=1)
            except LINK_ERRORS:
                self._store_now(keys, args)
                return
            self._unconfirmed.append((keys, args))
            self._last_send = self.clock()
            self._has_unconfirmed.set()

    def confirm(self) -> None:
        """Wait until every call sent so far has been answered (sending failures again)."""
        with self._lock:
            self._confirm()

    def close(self) -> None:
        """Confirm everything, then release the connection (the process is stopping)."""
        with self._lock:
            self._confirm()
            self._closed = True
            self._writes.drop()
            self._has_unconfirmed.set()  # let the idle thread see the close and end

    def _confirm(self) -> None:
        unconfirmed, self._unconfirmed = self._unconfirmed, []
        self._has_unconfirmed.clear()
        for (keys, args), reply in zip(unconfirmed, self._writes.collect(), strict=True):
            if not isinstance(reply, Exception):
                continue
            log.warning("result write not confirmed (%s): storing it again", reply)
            try:
                self._store_now(keys, args)
            except Exception:  # an earlier job's write: never fail the current job for it
                log.exception("result %s could not be stored after retries", keys[0])

    def _confirm_when_idle(self) -> None:
        while True:
            self._has_unconfirmed.wait()
            time.sleep(IDLE_CONFIRM_S)
            with self._lock:
                if self._closed:
                    return
                if self._unconfirmed and self.clock() - self._last_send >= IDLE_CONFIRM_S:
                    try:
                        self._confirm()
                    except Exception:  # keep checking: the next write may find Redis back
                        log.exception("confirming result writes failed")
