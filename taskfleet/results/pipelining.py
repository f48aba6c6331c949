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

Inside :func:`coalesced` (a solo worker running a fetched batch of short jobs,
``taskfleet.routing.fetch_batch``) the writes of the batch's jobs are held in the process and
sent together, in one system call, when the batch ends, and their replies are read together
before the next write: a batch of eight no-op jobs cost two system calls for its results
instead of sixteen (a profile of W1's solo workers put a third of their time in the socket
calls of result writes). A held write still leaves before its job's acknowledgement: the
unacked bookkeeping calls :func:`flush_coalesced` before it sends any removal, so a worker
killed mid-batch has neither sent and every job of the batch runs again. The batch's time
budget bounds how long a result waits.

The raw connection and its owed replies: :mod:`taskfleet.results.late_replies`.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis

from taskfleet.results.late_replies import LINK_ERRORS, LateReplies, packed

log = logging.getLogger(__name__)

#: Unconfirmed writes are checked this long after the last one when no other write comes.
IDLE_CONFIRM_S = 0.05

Write = tuple[list[str], list[Any]]
StoreNow = Callable[[list[str], list[Any]], None]

#: Per thread: how many :func:`coalesced` scopes are open (writes are held while any is).
_scope = threading.local()
#: Scripts holding writes, flushed together (one per result backend, in practice).
_holding: weakref.WeakSet[PipelinedScript] = weakref.WeakSet()


@contextmanager
def coalesced() -> Iterator[None]:
    """Hold this thread's result writes until the scope ends, then send them in one call."""
    _scope.depth = getattr(_scope, "depth", 0) + 1
    try:
        yield
    finally:
        _scope.depth -= 1
        if not _scope.depth:
            flush_coalesced()


def flush_coalesced() -> None:
    """Send every held write now (called before any acknowledgement leaves the process)."""
    for script in list(_holding):
        script.flush()


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
        #: Writes held by a :func:`coalesced` scope, and their packed commands.
        self._held: list[Write] = []
        self._held_packed: list[bytes] = []
        self._last_send = 0.0
        self._lock = threading.Lock()
        self._has_unconfirmed = threading.Event()
        self._closed = False
        threading.Thread(target=self._confirm_when_idle, name="result-confirm", daemon=True).start()

    def send(self, keys: list[str], args: list[Any]) -> None:
        """Send one call; earlier calls are confirmed first (their replies are long in).
        Inside a :func:`coalesced` scope of this thread the call is held instead."""
        command = packed([("EVALSHA", self._sha, len(keys), *keys, *args)])
        with self._lock:
            if getattr(_scope, "depth", 0):
                self._held.append((keys, args))
                self._held_packed.append(command)
                _holding.add(self)
                return
            self._confirm()
            self._send([(keys, args)], [command])

    def flush(self) -> None:
        """Send the held calls, in one system call (their replies are read later)."""
        with self._lock:
            self._flush()
            if not self._held:
                _holding.discard(self)

    def _flush(self) -> None:
        writes, commands = self._held, self._held_packed
        if not writes:
            return
        self._held, self._held_packed = [], []
        self._confirm()
        self._send(writes, commands)

    def _send(self, writes: list[Write], commands: list[bytes]) -> None:
        try:
            # One buffer: redis-py makes a sendall of each item of a list.
            self._writes.send([b"".join(commands)], replies=len(writes))
        except LINK_ERRORS:
            for index, (keys, args) in enumerate(writes):
                try:
                    self._store_now(keys, args)
                except Exception:  # still held: the next flush tries them again
                    self._held[:0] = writes[index:]
                    self._held_packed[:0] = commands[index:]
                    _holding.add(self)
                    raise
            return
        self._unconfirmed.extend(writes)
        self._last_send = self.clock()
        self._has_unconfirmed.set()

    def confirm(self) -> None:
        """Wait until every call made so far has been answered (sending failures again)."""
        with self._lock:
            self._flush()
            self._confirm()

    def close(self) -> None:
        """Confirm everything, then release the connection (the process is stopping)."""
        with self._lock:
            self._flush()
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
