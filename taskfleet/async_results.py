"""Waiting for results from asyncio: one pub/sub connection for every waiter, no thread each.

The result store script PUBLISHes each result on its own key's channel
(:data:`taskfleet.results.backend.STORE_RESULT_LUA`). A :class:`ResultWaiter` subscribes to the
key of every job awaited, on one ``redis.asyncio`` pub/sub connection read by one task. Once
Redis has confirmed a subscription, the key is read (one MGET for every key confirmed
meanwhile), so a result stored before the subscription is not missed; a key Redis does not
have may be an old result only Postgres still holds, read through the result backend in the
default executor, one call per batch of such keys. Every :data:`SAFETY_POLL_S` all awaited
keys are read again, in case a message was lost with a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import redis.asyncio
from celery import Celery, states

log = logging.getLogger(__name__)

#: Seconds the reader waits for a message before it looks whether it still has work.
READ_TIMEOUT_S = 1.0
#: Seconds between two reads of every awaited key (lost messages cost at most this).
SAFETY_POLL_S = 1.0
#: Keys per MGET.
MGET_CHUNK = 1000
#: Seconds to wait before using the pub/sub connection again after it failed.
RETRY_AFTER_S = 0.5


class _Batcher:
    """Hands everything added since its last run to ``handle``, in one task."""

    def __init__(self, handle: Callable[[set[bytes]], Awaitable[None]]) -> None:
        self._handle = handle
        self._items: set[bytes] = set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def add(self, items: Iterable[bytes]) -> None:
        """Queue ``items`` for the next run; start one if none is under way."""
        if self._closed:
            return
        self._items.update(items)
        if self._items and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while self._items:
            items, self._items = self._items, set()
            try:
                await self._handle(items)
            except Exception:  # the safety poll serves these keys meanwhile
                log.warning("result waiter: %s failed", self._handle.__name__, exc_info=True)

    async def cancel(self) -> None:
        """Stop: the run under way is cancelled, later additions are ignored."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class ResultWaiter:
    """Awaits the results of many jobs on two Redis connections. One per event loop."""

    def __init__(self, app: Celery, redis_url: str) -> None:
        self.app = app
        self.backend = app.backend
        self.redis = redis.asyncio.Redis.from_url(redis_url)
        self.pubsub = self.redis.pubsub()
        self._waiters: dict[bytes, list[asyncio.Future[dict[str, Any]]]] = {}
        self._subscribed: set[bytes] = set()
        self._changes = _Batcher(self._sync_subscriptions)
        self._looks = _Batcher(self._look)
        self._durable = _Batcher(self._look_durable)
        self._reader: asyncio.Task[None] | None = None

    async def wait(self, job_id: str, timeout: float | None) -> dict[str, Any]:
        """The meta of job ``job_id`` once it is final (SUCCESS, FAILURE, REVOKED).

        Raises:
            TimeoutError: not final within ``timeout`` seconds.
        """
        key = self._key(job_id)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(future)
        self._changes.add([key])
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            waiting = self._waiters.get(key, [])
            if future in waiting:
                waiting.remove(future)
            if not waiting:
                self._waiters.pop(key, None)
                self._changes.add([key])

    def _key(self, job_id: str) -> bytes:
        key = self.backend.get_key_for_task(job_id)
        return key if isinstance(key, bytes) else str(key).encode()

    async def _sync_subscriptions(self, keys: set[bytes]) -> None:
        """Subscribe to the awaited keys among ``keys``, unsubscribe from the others."""
        wanted = {k for k in keys if k in self._waiters} - self._subscribed
        unwanted = {k for k in keys if k not in self._waiters} & self._subscribed
        try:
            if wanted:
                await self.pubsub.subscribe(*wanted)
                self._subscribed |= wanted
            if unwanted:
                await self.pubsub.unsubscribe(*unwanted)
                self._subscribed -= unwanted
        finally:  # the reader also polls, and retries what failed here
            if self._waiters and (self._reader is None or self._reader.done()):
                self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        """Read messages: results, and subscription confirmations (then read their keys)."""
        loop = asyncio.get_running_loop()
        next_poll = loop.time() + SAFETY_POLL_S
        while self._subscribed or self._waiters:
            message = None
            try:
                if self.pubsub.connection is None:  # no subscription went through yet
                    await asyncio.sleep(RETRY_AFTER_S)
                else:
                    message = await self.pubsub.get_message(timeout=READ_TIMEOUT_S)
            except (redis.RedisError, OSError):
                log.warning("result waiter: pub/sub read failed", exc_info=True)
                await asyncio.sleep(RETRY_AFTER_S)
                next_poll = loop.time()
            if message is not None:
                channel = message["channel"]
                if message["type"] == "message":
                    self._offer(channel, message["data"])
                elif message["type"] == "subscribe" and channel in self._waiters:
                    self._looks.add([channel])
            if loop.time() >= next_poll:
                self._looks.add(self._waiters)
                self._changes.add(k for k in self._waiters if k not in self._subscribed)
                next_poll = loop.time() + SAFETY_POLL_S

    async def _look(self, keys: set[bytes]) -> None:
        """Read ``keys`` from Redis; those it lacks may be old results in Postgres."""
        wanted = [k for k in keys if k in self._waiters]
        absent: list[bytes] = []
        for start in range(0, len(wanted), MGET_CHUNK):
            chunk = wanted[start : start + MGET_CHUNK]
            for key, value in zip(chunk, await self.redis.mget(chunk), strict=True):
                if value is None:
                    absent.append(key)
                else:
                    self._offer(key, value)
        self._durable.add(absent)

    async def _look_durable(self, keys: set[bytes]) -> None:
        """Read ``keys`` through the result backend (Postgres), in one executor call."""
        wanted = [k for k in keys if k in self._waiters]
        if wanted:
            loop = asyncio.get_running_loop()
            for key, value in await loop.run_in_executor(None, self._read_durable, wanted):
                if value is not None:
                    self._offer(key, value)

    def _read_durable(self, keys: list[bytes]) -> list[tuple[bytes, Any]]:
        """In a worker thread: the backend's read, which falls back to Postgres."""
        backend = self.app.backend  # this thread's own
        return [(key, backend.get(key)) for key in keys]

    def _offer(self, key: bytes, value: bytes | str) -> None:
        """A result for ``key``: wake its waiters if it is final."""
        waiters = self._waiters.get(key)
        if not waiters:
            return
        try:
            meta = self.backend.decode_result(value)
        except Exception:  # not a result this backend can read: the waiters keep waiting
            log.warning("result waiter: cannot decode %r", key, exc_info=True)
            return
        if meta.get("status") not in states.READY_STATES:
            return
        for future in waiters:
            if not future.done():
                future.set_result(meta)

    async def close(self) -> None:
        """Stop reading and release both connections; waits still pending are cancelled."""
        for futures in self._waiters.values():
            for future in futures:
                future.cancel()
        for batcher in (self._changes, self._looks, self._durable):
            await batcher.cancel()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self.pubsub.aclose()
        await self.redis.aclose()
