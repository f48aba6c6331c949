"""Kombu's Redis transport, tuned for taskfleet's workers.

Three changes to stock kombu, each a subclass hook rather than a hand-written transport:

* **Priority order.** Stock kombu on Redis serves priority 0 first, the opposite of
  RabbitMQ. Rather than making producers invert numbers (which bare ``send_task`` callers in
  other languages would get wrong), the consuming side reads the sub-lists from 9 down to 0.
  Publishing is unchanged, so stock kombu producers stay compatible.
* **One Redis client per channel.** Stock kombu builds a new ``redis.Redis`` object (and its
  response-callback table) for every ack and every delivery; profiling the prefork parent
  put that at ~8% of its CPU. The channel now reuses one client per connection pool.
* **Bookkeeping without round trips.** With ``acks_late`` stock kombu costs the prefork
  parent three synchronous Redis round trips per job: BRPOP, recording the delivery as
  unacked, removing it on ack. The record now rides in the same write as the next BRPOP and
  the removals are batched behind it (:mod:`taskfleet.routing.bookkeeping`), so a job costs
  the parent one write to Redis. Only consumers driven by the event loop (prefork, solo) do
  this; the gevent pool's loop keeps stock kombu's synchronous writes.
* **Pop and record in one step** (``atomic_fetch``, on by default): the BRPOP goes out as a
  Lua call that records the delivery before it pops it, so no job is ever held only in
  flight (:mod:`taskfleet.routing.atomic_fetch`). ``TASKFLEET_ATOMIC_FETCH=false`` goes
  back to BRPOP.

All of it relies on private kombu and redis-py internals (``tests/unit/test_private_hooks.py``
lists them): ``TASKFLEET_FAST_TRANSPORT=false`` runs stock kombu's transport instead, with
only the priority order kept (:mod:`taskfleet.routing.stock_transport`).
"""

from __future__ import annotations

import logging
from bisect import bisect
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import Empty
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from taskfleet.results.late_replies import Command
from taskfleet.results.pipelining import coalesced
from taskfleet.routing import fetch_batch
from taskfleet.routing.atomic_fetch import (
    FETCH_LUA,
    SUSPEND_AFTER_REFUSAL_S,
    AtomicFetch,
)
from taskfleet.routing.bookkeeping import ACK_BATCH_MAX, ACK_FLUSH_INTERVAL_S, BatchedQoS
from taskfleet.routing.fetch_channel import WAIT, FetchScriptChannel
from taskfleet.routing.priority import ALL_PRIORITY_STEPS, MAX_PRIORITY, MIN_PRIORITY
from taskfleet.routing.reply_skip import known_to_skip_replies, skips_replies, without_replies

__all__ = ["ACK_BATCH_MAX", "ACK_FLUSH_INTERVAL_S", "ALL_PRIORITY_STEPS", "TRANSPORT_PATH"]

TRANSPORT_PATH = "taskfleet.routing.transport:Transport"
#: Attribute of a fetch connection holding the bytes to send in front of its next command.
PREFIX_ATTR = "fetch_prefix"
#: Attribute of a fetch connection holding the :class:`AtomicFetch` its next BRPOP becomes.
FETCH_ATTR = "fetch_script"
log = logging.getLogger(__name__)


class _PrefixedSends:
    """A redis-py connection that sends queued bytes in the same write as its next command.

    kombu builds the BRPOP command and sends it inside ``Channel._brpop_start``; queuing the
    bookkeeping on the connection lets that one send carry it, without restating kombu's
    key order, priority steps and key prefixing here. The packed BRPOP itself is cached (it
    names the same ten priority lists every time; redis-py packs them anew per call).
    """

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        prefix: bytes = self.__dict__.pop(PREFIX_ATTR, b"")
        fetch: AtomicFetch | None = self.__dict__.pop(FETCH_ATTR, None)
        if not args or args[0] != "BRPOP":
            if prefix:
                self.send_packed_command([prefix], check_health=False)  # type: ignore[attr-defined]
            super().send_command(*args, **kwargs)  # type: ignore[misc]
            return
        command = _packed_fetches.get(args) if fetch is None else fetch.packed_call(self, args)
        if command is None:
            if len(_packed_fetches) >= PACKED_FETCHES_MAX:
                _packed_fetches.clear()
            chunks = self.pack_command(*args)  # type: ignore[attr-defined]
            command = _packed_fetches[args] = b"".join(chunks)
        self.send_packed_command(  # type: ignore[attr-defined]
            [prefix + command], check_health=kwargs.get("check_health", True)
        )


#: Packed BRPOP commands by their arguments (one per queue set a worker consumes).
_packed_fetches: dict[tuple[Any, ...], bytes] = {}
PACKED_FETCHES_MAX = 64


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def _with_prefixed_sends(connection_class: type) -> type:
    # Not cached: kombu defines a new connection class on every call that reaches here.
    return type(f"Prefixed{connection_class.__name__}", (_PrefixedSends, connection_class), {})


class Channel(FetchScriptChannel, kombu_redis.Channel):  # type: ignore[misc]
    """A Redis channel: most urgent sub-list first, one reused client, merged bookkeeping."""

    QoS = BatchedQoS
    priority_steps: list[int]
    _ascending_steps: list[int]
    #: True while a BRPOP reply is being delivered (its record may ride the next BRPOP).
    delivering = False
    #: Message priority -> sub-list step, filled per channel at start.
    _step_of: dict[int, int] = {}  # replaced per channel, never mutated

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._clients: dict[bool, Any] = {}
        super().__init__(*args, **kwargs)
        configured: list[int] = list(self.priority_steps)
        self._ascending_steps = sorted(set(configured))
        # kombu's BRPOP (and basic_get) try the keys in this order: most urgent first.
        self.priority_steps = sorted(self._ascending_steps, reverse=True)
        # kombu maps every step for every BRPOP it sends (ten per fetch): look them up.
        self._step_of = {n: self._step(n) for n in range(MIN_PRIORITY, MAX_PRIORITY + 1)}

    def priority(self, n: int) -> int:
        """The sub-list step a message priority lands in (same mapping as stock kombu)."""
        step = self._step_of.get(n)
        return self._step(n) if step is None else step

    def _step(self, n: int) -> int:
        steps = self._ascending_steps
        return int(steps[max(bisect(steps, n) - 1, 0)])

    def _create_client(self, asynchronous: bool = False) -> Any:
        """The channel's client for the current pool (rebuilt when kombu replaces the pool)."""
        pool = self.async_pool if asynchronous else self.pool
        client = self._clients.get(asynchronous)
        if client is None or client.connection_pool is not pool:
            client = self._clients[asynchronous] = super()._create_client(asynchronous)
        return client

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        """Stock parameters; the fetch (asynchronous) pool's connections can carry a prefix."""
        params: dict[str, Any] = super()._connparams(asynchronous)
        if asynchronous:
            params["connection_class"] = _with_prefixed_sends(params["connection_class"])
        return params

    def _brpop_start(self, timeout: Any = None) -> None:
        """Stock BRPOP (or the fetch script), sent in one write with the bookkeeping that
        waits for it; nothing while an idle channel waits for a change notification."""
        qos, connection = self._our_qos(), self.client.connection
        fetch = self._atomic(connection)
        if fetch is not None and fetch.waiting():
            return
        commands = [] if fetch is None else fetch.switches(connection._sock, self._prefixes)
        if qos is not None and qos.has_fetch_prefix() and skips_replies(connection):
            commands += qos.take_fetch_prefix()
        if not commands and fetch is None:
            super()._brpop_start(timeout)
            return
        if commands:
            setattr(connection, PREFIX_ATTR, without_replies(commands))
        if fetch is not None:
            setattr(connection, FETCH_ATTR, fetch)
        try:
            super()._brpop_start(timeout)
        finally:
            unsent = connection.__dict__.pop(PREFIX_ATTR, None)
            self._fetch_sent = fetch is not None and FETCH_ATTR not in connection.__dict__
            connection.__dict__.pop(FETCH_ATTR, None)
        if unsent:  # kombu sent no BRPOP (no active queue): the writes go alone
            connection.send_packed_command([unsent])

    def _brpop_read(self, **options: Any) -> Any:
        """Stock read; the reply confirms every write sent before the BRPOP.

        Any answer (a message, a timeout, an error reply) means Redis ran every write sent
        before it on that connection: the QoS forgets them (``fetch_answered``). A dropped
        connection has queued them again instead (``fetch_lost``). Without this the QoS kept
        every removal it ever sent (and, without atomic fetch, every record): ~100 bytes
        per job in the prefork parent, and ``BatchedQoS._stamped`` rebuilt a set of all of
        them on most deliveries.

        A solo worker that fetches batches (``fetch_batch``) sends the results of the jobs
        it runs here together, when the read ends (``taskfleet.results.pipelining``).
        """
        sizer = fetch_batch.sizer()
        if sizer is None:
            return self._read_fetched(None, **options)
        with coalesced():
            return self._read_fetched(sizer, **options)

    def _read_fetched(self, sizer: fetch_batch.BatchSizer | None, **options: Any) -> Any:
        self.delivering = True
        fetch, sent, self._fetch_sent = self._fetch, self._fetch_sent, False
        answered = True
        started = sizer.clock() if sizer is not None else 0.0
        read = False
        try:
            found = super()._brpop_read(**options)
            read = True
        except Empty:
            if sent and fetch is not None:
                fetch.answered(False)
            raise
        except self.connection_errors:
            answered = False
            self._fetch_sent = sent
            self._fetch_unanswered()
            raise
        except redis.exceptions.NoScriptError:  # Redis restarted and lost its script cache
            self.client.script_load(FETCH_LUA)
            raise Empty() from None
        except redis.ResponseError as exc:
            if not sent:
                raise
            log.warning(
                "Redis refused the fetch script (%s): BRPOP for %.0f s",
                exc,
                SUSPEND_AFTER_REFUSAL_S,
            )
            self._drop_fetch(refused=True)
            raise Empty() from None
        finally:
            self.delivering = False
            qos = self._our_qos()
            if answered and qos is not None:
                qos.fetch_answered()
            if self.extra_deliveries and not read:
                self._return_extras(self.extra_deliveries)  # the batch's first job raised
        if sent and fetch is not None:
            fetch.answered(True, self.fetch_drained)
        if sizer is not None:
            sizer.observe(_text(self.delivery_kind), sizer.clock() - started)
            if self.extra_deliveries:
                self._deliver_extras(sizer, started)
        return found

    def _deliver_extras(self, sizer: fetch_batch.BatchSizer, started: float) -> None:
        """Run the rest of a batch (every one recorded by the script) while its time budget
        lasts; what is left goes back to the head of its queue, in order."""
        extras, self.extra_deliveries = self.extra_deliveries, []
        raws, kinds = extras[0::3], extras[2::3]
        queue, fetch, qos = self.extra_queue, self._fetch, self._our_qos()
        stamp = fetch.last_stamp if fetch is not None else None
        handed = 0
        try:
            for raw, kind in zip(raws, kinds, strict=True):
                if qos is not None and not sizer.within_budget(started):
                    break
                handed += 1  # handed over, even if its delivery raises
                begun = sizer.clock()
                self.delivery_recorded, self.recorded_stamp = True, stamp
                self.delivering = True
                try:
                    self.connection._deliver(loads(bytes_to_str(raw)), queue)
                finally:
                    self.delivering = False
                sizer.observe(_text(kind), sizer.clock() - begun)
        finally:
            if handed < len(raws):
                self._return_extras(extras[3 * handed :])

    def _return_extras(self, extras: list[Any]) -> None:
        """Put a batch's undelivered rest (payload, recorded, kind, ...) back at the head of
        its queue, in order."""
        self.extra_deliveries = []
        qos = self._our_qos()
        if qos is not None and extras:
            qos.return_undelivered([loads(bytes_to_str(raw)) for raw in extras[0::3]])
        if self._fetch is not None:  # the lists hold these again: fetch, do not wait
            self._fetch.woken()

    def _on_connection_disconnect(self, connection: Any) -> None:
        """Stock handling; writes not yet confirmed by a dropped fetch are queued again."""
        client = self.__dict__.get("client")
        qos = self._our_qos()
        if client is not None and client.connection is connection:
            self._fetch_unanswered()
            if qos is not None:
                qos.fetch_lost()
        super()._on_connection_disconnect(connection)

    def send_on_fetch_connection(self, commands: list[Command], idle_only: bool = False) -> bool:
        """Send writes on the fetch connection, if it is up and skips replies.

        Behind a BRPOP still waiting they run when it returns; ``idle_only`` refuses that.
        """
        client = self.__dict__.get("client")
        connection = getattr(client, "connection", None)
        if connection is None or connection._sock is None or not commands:
            return False
        if not known_to_skip_replies(connection):
            return False
        if idle_only and self._in_poll:
            return False
        try:
            connection.send_packed_command([without_replies(commands)], check_health=False)
        except self.connection_errors:
            return False
        return True

    def flush_bookkeeping(self, acks: bool = True) -> None:
        """Send the records no BRPOP carried and, with ``acks``, the pending removals."""
        qos = self._our_qos()
        if qos is not None:
            qos.flush_records()
            if acks:
                qos.flush_acks()

    def _our_qos(self) -> BatchedQoS | None:
        qos = self.__dict__.get("_qos")
        return qos if isinstance(qos, BatchedQoS) else None


class Poller(kombu_redis.MultiChannelPoller):  # type: ignore[misc]
    """kombu's poller; after each loop iteration's BRPOPs, records left behind are sent."""

    def on_readable(self, fileno: int) -> Any:
        """Stock; change notifications are read even by a channel that cannot consume now
        (left unread, a readable socket would spin the loop)."""
        chan_type = self._fd_to_chan.get(fileno)
        if chan_type is not None and chan_type[1] == WAIT:
            return chan_type[0].handlers[WAIT]()
        return super().on_readable(fileno)

    def on_poll_start(self) -> None:
        """Stock: (re)issue BRPOPs. Then send the records a full channel kept from riding."""
        super().on_poll_start()
        for channel in self._channels:
            if isinstance(channel, Channel):
                channel.flush_bookkeeping(acks=False)


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    """Redis transport using :class:`Channel`; merges bookkeeping when driven by a loop."""

    Channel = Channel
    #: Set once an event loop drives the transport (its timer then flushes acks).
    batch_acks = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cycle = Poller()

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        """Stock registration, plus merged bookkeeping and its ack flush timer."""
        super().register_with_event_loop(connection, loop)
        self.batch_acks = True
        loop.call_repeatedly(ACK_FLUSH_INTERVAL_S, self._flush_acks)

    def _flush_acks(self) -> None:
        for channel in list(self.channels):
            if isinstance(channel, Channel):
                channel.flush_bookkeeping()
