"""The channel side of atomic fetch: set up the script and its waiter, and wake on changes.

:mod:`taskfleet.routing.atomic_fetch` holds the script and its state machine; this mixin
(the base of ``taskfleet.routing.transport.Channel``) sets them up on a channel's first
fetch, registers the change notifications' connection with kombu's poller (event type
:data:`WAIT`, beside kombu's BRPOP and LISTEN), and tears it down. The transport's
``_brpop_start`` and ``_brpop_read`` send the script and account for its replies.
"""

from __future__ import annotations

import contextlib
import logging
from time import monotonic
from typing import Any

import redis
from kombu.exceptions import ChannelError
from kombu.transport import redis as kombu_redis

from taskfleet.routing import deferred_restore
from taskfleet.routing.atomic_fetch import (
    FETCH_LUA,
    SUSPEND_AFTER_REFUSAL_S,
    AtomicFetch,
    ChangeWaiter,
    tracked_prefixes,
)
from taskfleet.routing.reply_skip import skips_replies

log = logging.getLogger(__name__)

#: The poller's event type of a channel's change notifications (beside BRPOP and LISTEN).
WAIT = "WAIT"


class _WaiterClient:
    """What kombu's poller registers: an object with a ``connection``."""

    def __init__(self, waiter: ChangeWaiter) -> None:
        self.connection = waiter.connection


class FetchScriptChannel(kombu_redis.Channel):  # type: ignore[misc]
    """kombu's Redis channel, able to fetch with the script (see the module doc)."""

    from_transport_options = (*kombu_redis.Channel.from_transport_options, "atomic_fetch")
    #: Pop and record in one Lua call (transport option ``atomic_fetch``).
    atomic_fetch = True
    #: True while delivering a message the fetch script has recorded as unacked itself.
    delivery_recorded = False
    #: The stamp of the record the fetch script wrote for the delivery (None: not recorded).
    recorded_stamp: float | None = None
    _fetch: AtomicFetch | None = None
    #: The fetch in flight is the script's (its reply is accounted to ``_fetch``).
    _fetch_sent = False
    _fetch_refused_until = 0.0
    #: The job kind of the delivery the script's reply carries first (``b""``: unknown).
    delivery_kind: Any = b""
    #: The rest of the fetch script's reply (payload, recorded, kind, ...) beyond its first
    #: message, from the queue :attr:`extra_queue`: the channel delivers them next.
    extra_deliveries: list[Any] = []  # replaced per reply, never mutated
    extra_queue = ""
    #: The last script reply took the last message of the lists it fetches from.
    fetch_drained = False
    #: The queues consumed when :meth:`_queue_keys` last ran, and their list keys.
    _watched_queues: tuple[tuple[str, ...], frozenset[bytes]] = ((), frozenset())
    handlers: dict[str, Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: Queues consumed without acks (control replies): the script would record their
        #: messages as unacked and nothing would ever remove the records.
        self.no_ack_queues: set[str] = set()
        super().__init__(*args, **kwargs)
        self.handlers = {**self.handlers, WAIT: self._on_change}

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        """Stock; a queue consumed without acks keeps its channel on BRPOP."""
        if no_ack:
            self.no_ack_queues.add(queue)
        else:
            self.no_ack_queues.discard(queue)
        if self._fetch is not None:
            self._fetch.queues_changed()
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def basic_cancel(self, consumer_tag: str) -> Any:
        """Stock; the fetch tracks the queues left (a standby worker's promotion)."""
        if self._fetch is not None:
            self._fetch.queues_changed()
        return super().basic_cancel(consumer_tag)

    def script_fetches(self) -> bool:
        """Whether this channel's fetches go through the script (every queue acked)."""
        if not self.no_ack_queues:  # the usual case, on every fetch: no set built
            return self.atomic_fetch
        return self.atomic_fetch and self.no_ack_queues.isdisjoint(self.active_queues)

    def _fetched(self, response: Any, **_: Any) -> Any:
        """The BRPOP reply callback of the fetch client: the script's third element says
        whether it recorded the delivery, its last whether the lists are empty now."""
        scripted = bool(response) and len(response) > 2  # a plain BRPOP's reply has two
        self.fetch_drained = scripted and bool(response[-1])
        if scripted:
            response = response[:-1]
        self.delivery_recorded = bool(response and len(response) >= 3 and response[2])
        fetch = self._fetch
        self.recorded_stamp = fetch.last_stamp if fetch and self.delivery_recorded else None
        self.delivery_kind = response[3] if response and len(response) > 3 else b""
        if response and len(response) > 4:  # a batch (``taskfleet.routing.fetch_batch``)
            self.extra_deliveries = list(response[4:])
            self.extra_queue = self._queue_of(response[0])
        return (response[0], response[1]) if response else None

    def _queue_of(self, list_key: Any) -> str:
        """The queue a priority sub-list belongs to (as kombu's BRPOP reader finds it)."""
        key = list_key.decode() if isinstance(list_key, bytes) else str(list_key)
        prefix = self.global_keyprefix or ""
        if prefix and key.startswith(prefix):
            key = key[len(prefix) :]
        return key.rsplit(self.sep, 1)[0]

    def _atomic(self, connection: Any) -> AtomicFetch | None:
        """The channel's fetch script, set up on first use (None: plain BRPOP)."""
        if not self.script_fetches():
            return None
        if self._fetch is not None:
            return self._fetch
        if monotonic() < self._fetch_refused_until or connection._sock is None:
            return None
        qos = self.qos
        try:
            if not skips_replies(connection):
                raise ChannelError("Redis has no CLIENT REPLY SKIP")
            sha = str(self.client.script_load(FETCH_LUA))
            waiter = ChangeWaiter(self.async_pool)
            track = ("CLIENT", "TRACKING", "ON", "REDIRECT", waiter.client_id, "BCAST", "NOLOOP")
            self.client.execute_command(*track)  # probed: refused here, not silently later
            self.client.execute_command("CLIENT", "TRACKING", "OFF")
        except (redis.ResponseError, ChannelError) as exc:
            log.warning("atomic fetch unavailable (%s): BRPOP, then a separate record", exc)
            self.atomic_fetch = False
            return None
        prefix = self.global_keyprefix or ""
        owner_tags = getattr(qos, "owner_tags_key", None)
        keys = (
            prefix + self.unacked_key,
            prefix + self.unacked_index_key,
            prefix + (owner_tags or ""),
        )
        self.client.set_response_callback("BRPOP", self._fetched)
        self.connection.cycle._register(self, _WaiterClient(waiter), WAIT)
        self._fetch = AtomicFetch(sha, keys, owner_tags is not None, waiter)
        return self._fetch

    def _fetch_unanswered(self) -> None:
        """The connection dropped (or the channel closed) with a fetch script call unanswered:
        the next channel restores what it may have taken (``deferred_restore.lost_fetch``)."""
        fetch, sent, self._fetch_sent = self._fetch, self._fetch_sent, False
        if sent and fetch is not None and fetch.has_owner:
            deferred_restore.lost_fetch(fetch.head_keys[2], fetch.last_stamp)

    def _prefixes(self) -> list[str]:
        prefix = self.global_keyprefix or ""
        return tracked_prefixes([prefix + queue for queue in self.active_queues])

    def _on_change(self) -> None:
        """Read the change notifications that arrived; an idle channel fetches again."""
        fetch = self._fetch
        if fetch is None:
            return
        try:
            if not fetch.waiter.drain(self._queue_keys().__contains__):
                return  # another key under a tracked prefix: a result, a dead-letter list
        except (*self.connection_errors, OSError, redis.RedisError):  # gone, or unreadable
            self._drop_fetch()  # set up again, with a new waiter, on the next fetch
        fetch.woken()

    def _queue_keys(self) -> frozenset[bytes]:
        """The list keys of the queues consumed now, every priority sub-list (kombu's layout:
        ``queue``, ``queue + sep + step``) with the global key prefix."""
        queues = tuple(self.active_queues)
        if self._watched_queues[0] != queues:
            prefix = self.global_keyprefix or ""
            keys = {
                (prefix + (f"{queue}{self.sep}{step}" if step else queue)).encode()
                for queue in queues
                for step in self.priority_steps
            }
            self._watched_queues = (queues, frozenset(keys))
        return self._watched_queues[1]

    def _poll_error(self, type: Any, **options: Any) -> Any:
        """Stock handling; an error on the notification connection drops it."""
        if type == WAIT:
            self._drop_fetch()
            return None
        return super()._poll_error(type, **options)

    def _drop_fetch(self, refused: bool = False) -> None:
        """Stop using the fetch script's waiter (and, after a refusal, the script a while)."""
        fetch, self._fetch = self._fetch, None
        if refused:
            self._fetch_refused_until = monotonic() + SUSPEND_AFTER_REFUSAL_S
        if fetch is None:
            return
        cycle = self.connection.cycle
        for key in [k for k in cycle._chan_to_sock if k[0] is self and k[2] == WAIT]:
            sock = cycle._chan_to_sock.pop(key)
            with contextlib.suppress(Exception):
                fd = sock.fileno()
                if cycle._fd_to_chan.get(fd) == (self, WAIT):
                    del cycle._fd_to_chan[fd]
                cycle._unregister_from_poll(fd)
        with contextlib.suppress(Exception):
            fetch.waiter.close()

    def close(self) -> None:
        """Stock close, and the notification connection with it."""
        self._fetch_unanswered()
        self._drop_fetch()
        super().close()
