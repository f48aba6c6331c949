"""Fleet-wide L1 invalidation over Redis pub/sub.

Every write or delete publishes the keys (or pattern) it changed from inside the same Lua
call that changed Redis; each process's listener drops them from its L1. Pub/sub is
at-most-once, so a listener whose connection broke may have missed messages: it drops its
whole L1 on the break and again once resubscribed, rather than serve stale values. While
Redis is unreachable nothing can be written (writes fail loudly), so L1 refills from L3 and
serves; a process cut off from a Redis the others still reach can hold values up to L1's TTL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import redis

log = logging.getLogger(__name__)
LISTEN_TIMEOUT_S = 0.25
RECONNECT_DELAY_S = 0.2


class InvalidationListener:
    """A daemon thread applying invalidations published by other processes."""

    def __init__(
        self,
        client: redis.Redis,
        channel: str,
        origin: str,
        *,
        drop_keys: Callable[[list[str]], Any],
        drop_pattern: Callable[[str], Any],
        drop_all: Callable[[], Any],
    ) -> None:
        """Listen on ``channel``, ignoring messages this process (``origin``) published."""
        self.client = client
        self.channel = channel
        self.origin = origin
        self.drop_keys = drop_keys
        self.drop_pattern = drop_pattern
        self.drop_all = drop_all
        self.resets = 0
        self.received = 0
        self.subscribed = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start listening; returns at once (see :attr:`subscribed`)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="taskfleet-cache-invalidation", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 2 * LISTEN_TIMEOUT_S) -> None:
        """Stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _reset(self) -> None:
        self.resets += 1
        self.drop_all()

    def _run(self) -> None:
        while not self._stop.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                # Anything published while we were not subscribed is lost: start afresh.
                self._reset()
                self.subscribed.set()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=LISTEN_TIMEOUT_S)
                    if message is not None:
                        self._apply(message["data"])
            except (redis.RedisError, OSError) as exc:
                if self.subscribed.is_set():  # once per break, so L1 can refill meanwhile
                    log.warning("cache invalidation: lost subscription (%s); L1 dropped", exc)
                    self.subscribed.clear()
                    self._reset()
                self._stop.wait(RECONNECT_DELAY_S)
            finally:
                with contextlib.suppress(redis.RedisError, OSError):
                    pubsub.close()

    def _apply(self, data: bytes | str) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            log.error("cache invalidation: malformed message %r; L1 dropped", data)
            self._reset()
            return
        self.received += 1
        if not isinstance(message, dict):
            self._reset()
        elif message.get("all"):
            self.drop_all()
        elif message.get("o") == self.origin:
            return
        elif "p" in message:
            self.drop_pattern(str(message["p"]))
        elif isinstance(message.get("k"), list):
            self.drop_keys([str(k) for k in message["k"]])
        else:
            self._reset()
