"""Pop a delivery and record it as unacked in one step, so no job is ever held only in flight.

kombu's Redis transport BRPOPs a message, then records it in the ``unacked`` hash with a
later write. In between, the popped message exists only in the reply travelling to the worker
and in the worker's memory: a worker killed then loses the job for good, with no record for
a reclaimer or the visibility timeout to restore (counted: one job lost in 2 of about 11
SIGKILLs of a gevent worker, ``RELIABILITY.md``).

With atomic fetch the channel's BRPOP goes out as one Lua call (:data:`FETCH_LUA`) over the
same lists in the same order. It reads the oldest message, writes its ``unacked`` record,
its ``unacked_index`` score and its owner's entry (``taskfleet.routing.owners``), exactly as
``taskfleet.routing.bookkeeping`` would, and only then pops it. Redis runs a script whole, so
a delivery is either still queued or recorded, at every instant. The writes come before the
pop so that a refused write (a full ``noeviction`` server) fails the call with the message
still queued.

A solo worker with a backlog of short jobs asks for several messages per call
(:mod:`taskfleet.routing.fetch_batch`): the script then records and pops up to that many from
the same list, each exactly as it does one, and the channel runs them one after the other.

Lua cannot block, so when every list is empty the channel waits to be told that one of them
changed. Redis's client-side caching does that: ``CLIENT TRACKING ON BCAST PREFIX <queue>
REDIRECT <id> NOLOOP`` on the fetch connection makes Redis send an invalidation message to a
second connection (:class:`ChangeWaiter`, watched by the same poller) whenever another client
writes a key starting with one of the channel's queue names. A prefix matches more than the
queue's lists (the default queue ``celery`` matches every ``celery-task-meta-*`` result key),
so a notification wakes the channel only when it names one of them. A notification is only a
wake-up: the channel then fetches again, and it also does so after ``IDLE_REFETCH_S``
without one, which bounds the cost of a notification lost with a dropped connection. Tracking
is switched on when a fetch finds nothing and off again after ``TRACKING_OFF_AFTER_HITS``
fetches in a row found a message, so a busy worker is not woken by every push of the fleet.
Both switches ride, reply skipped, in the same write as the fetch.

A fetch that takes the last message also says so (the reply's last element), and with
tracking on the channel then waits at once, as after an empty fetch, instead of sending one
more fetch to find the lists empty. Tracking was on when the script ran, so any later push
sends a notification. Measured at 1,000 jobs/s offered to two idle solo workers: about two
fetches per job, each a worker wake-up and a Redis script call, of which one was this empty
look (``BENCHMARKS.md``, W3's cost). Nothing the channel itself pushes back goes through the
fetch connection (``NOLOOP`` would hide it): a batch's returned rest ends the wait
(``taskfleet.routing.transport``).

``NOLOOP`` does not cover the script's own pops: Redis (7.0.15 and 6.2 here) notifies the
waiter of them too, and writes that notification before the script's reply, so the poller
reads it first and it wakes nothing. A push that lands between the script and that read is
read with it: the channel then waits for the next notification, or for ``IDLE_REFETCH_S``.
An empty fetch always had the same window; with several workers, each is notified too.

Hand-written: kombu has no atomic fetch (its BRPOP is one of the library's documented
at-most-once windows), and redis-py's client-side cache does not expose broadcast tracking
to another connection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from time import monotonic, time
from typing import Any

from taskfleet.results.late_replies import Command
from taskfleet.routing import fetch_batch

log = logging.getLogger(__name__)

#: Longest wait for a change notification before an idle channel fetches anyway (seconds).
IDLE_REFETCH_S = 1.0
#: Fetches in a row that found a message before tracking (and its notifications) is off.
TRACKING_OFF_AFTER_HITS = 16
#: After Redis refuses the fetch script (not for a missing script), plain BRPOP this long.
SUSPEND_AFTER_REFUSAL_S = 30.0
INVALIDATE_CHANNEL = "__redis__:invalidate"
#: Packed calls kept per channel: one per order kombu rotates its queues through.
PACKED_CALLS_MAX = 16

FETCH_LUA = """
-- KEYS: unacked, unacked_index, owner's tags, then the queue lists in BRPOP's order.
-- ARGV: stamp, '1' when the owner's tags are kept, most messages to take, then the job
-- kinds a batch may hold.
-- Returns {list, payload, 1 if recorded, kind, payload, 1, kind, ..., 1 if drained}: the
-- oldest message of the first non-empty list, then, while it and they are of those kinds,
-- the next ones of the same list, up to ARGV[3] in all. Only the first may be one it could
-- not record. The last element is 1 when every list is empty after the pops.
local most = tonumber(ARGV[3]) or 1
local short = {}
for j = 4, #ARGV do short[ARGV[j]] = true end
for i = 4, #KEYS do
  local payload = redis.call('LINDEX', KEYS[i], -1)
  local taken = {KEYS[i]}
  while payload do
    local ok, message = pcall(cjson.decode, payload)
    local properties = ok and type(message) == 'table' and message['properties']
    local headers = ok and type(message) == 'table' and message['headers']
    local kind = type(headers) == 'table' and headers['task']
    if type(kind) ~= 'string' then kind = '' end
    local tag = type(properties) == 'table' and properties['delivery_tag']
    local info = type(properties) == 'table' and properties['delivery_info']
    local recordable = type(tag) == 'string' and type(info) == 'table'
    if #taken > 1 and not (recordable and short[kind]) then break end
    if recordable then
      local exchange, routing_key = info['exchange'], info['routing_key']
      if exchange == nil then exchange = cjson.null end
      if routing_key == nil then routing_key = cjson.null end
      redis.call('ZADD', KEYS[2], ARGV[1], tag)
      redis.call('HSET', KEYS[1], tag, '[' .. payload .. ',' .. cjson.encode(exchange) .. ','
        .. cjson.encode(routing_key) .. ']')
      if ARGV[2] == '1' then redis.call('HSET', KEYS[3], tag, ARGV[1]) end
    end
    redis.call('RPOP', KEYS[i])
    taken[#taken + 1] = payload
    taken[#taken + 1] = recordable and 1 or 0
    taken[#taken + 1] = kind
    if #taken >= 3 * most or not (recordable and short[kind]) then break end
    payload = redis.call('LINDEX', KEYS[i], -1)
  end
  if #taken > 1 then
    taken[#taken + 1] = redis.call('EXISTS', unpack(KEYS, 4)) == 0 and 1 or 0
    return taken
  end
end
return false
"""


def tracked_prefixes(queue_keys: list[str]) -> list[str]:
    """The fewest prefixes covering ``queue_keys`` (Redis refuses overlapping ones)."""
    kept: list[str] = []
    for key in sorted(set(queue_keys)):
        if not any(key.startswith(prefix) for prefix in kept):
            kept.append(key)
    return kept


def _return_invalidations(connection: Any) -> None:
    """Under RESP3 (redis-py 8's default) an invalidation is a push that redis-py hands to
    its parser's hook, and ``read_response`` returns that hook's result: None without one.
    Return the message itself, so that :meth:`ChangeWaiter.drain` sees its keys. A parser
    without the hook leaves every notification a wake-up, as before.

    Not RESP2 on this connection instead: Redis 6.2 writes a flush's invalidation in the
    tracking client's protocol (``_``, RESP3's null) to a RESP2 subscriber, which redis-py
    then cannot parse."""
    setter = getattr(getattr(connection, "_parser", None), "set_invalidation_push_handler", None)
    if setter is not None:
        setter(_as_message)


def _as_message(response: Any) -> Any:
    return response


def names_wanted(message: Any, wanted: Callable[[bytes], bool]) -> bool:
    """Whether an invalidation (RESP3 ``[b"invalidate", keys]``, RESP2 ``[b"message",
    channel, keys]``; ``keys`` None after a flush) names a ``wanted`` key. A message of
    another shape counts as wanted."""
    keys = message[-1] if isinstance(message, list) and message else None
    if not isinstance(keys, list):
        return True
    return any(wanted(key if isinstance(key, bytes) else str(key).encode()) for key in keys)


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


class ChangeWaiter:
    """A connection subscribed to the invalidation messages of a channel's tracking.

    Args:
        pool: The channel's fetch pool (its connection class tells kombu's poller when the
            connection drops, as it does for the fetch connection itself).
    """

    def __init__(self, pool: Any) -> None:
        self.connection = pool.connection_class(**pool.connection_kwargs)
        self.connection.connect()
        _return_invalidations(self.connection)
        self.connection.send_command("CLIENT", "ID")
        self.client_id = int(self.connection.read_response())
        self.connection.send_command("SUBSCRIBE", INVALIDATE_CHANNEL)
        self.connection.read_response(push_request=True)  # RESP3 sends it as a push

    def drain(self, wanted: Callable[[bytes], bool] = lambda key: True) -> bool:
        """Read every notification already received; whether one names a key ``wanted``
        (raises if the link is gone).

        A prefix covers more than a queue's lists (``celery`` covers every
        ``celery-task-meta-*`` result): only a write to a wanted key wakes the channel. A
        notification naming no key (a flush) counts as wanted.
        """
        relevant = False
        while self.connection.can_read(timeout=0):
            message = self.connection.read_response(push_request=True)
            relevant = relevant or names_wanted(message, wanted)
        return relevant

    def close(self) -> None:
        """Drop the connection (kombu's poller forgets it through the disconnect hook)."""
        self.connection.disconnect()


class AtomicFetch:
    """One channel's fetch script, tracking switch and idle wait.

    Args:
        sha: The SHA1 of :data:`FETCH_LUA`, loaded on the server.
        head_keys: ``unacked``, ``unacked_index`` and the owner's tags key (as sent: with
            the global key prefix).
        has_owner: Whether the owner's tags are written.
        waiter: Where the invalidation messages arrive.
        clock: Monotonic clock (injected by tests).
    """

    def __init__(
        self,
        sha: str,
        head_keys: tuple[str, str, str],
        has_owner: bool,
        waiter: ChangeWaiter,
        clock: Any = monotonic,
    ) -> None:
        self.sha = sha
        self.head_keys = head_keys
        self.has_owner = has_owner
        self.waiter = waiter
        self.clock = clock
        #: The fetch connection's socket on which tracking is on (None: off).
        self.tracking_on: object | None = None
        self.waiting_since: float | None = None
        self.hits = 0
        self.wants_tracking = False
        #: The stamp of the last fetch sent: its delivery's record and owner entry carry it.
        self.last_stamp = 0.0
        self._packed: dict[tuple[Any, ...], tuple[int, bytes]] = {}
        #: The short kinds of the last call, and their packed arguments.
        self._kinds: tuple[tuple[str, ...], bytes] = ((), b"")

    def waiting(self) -> bool:
        """True while the channel waits for a notification (and not for too long yet)."""
        since = self.waiting_since
        if since is None:
            return False
        if self.clock() - since < IDLE_REFETCH_S:
            return True
        self.waiting_since = None
        return False

    def woken(self) -> None:
        """A notification arrived: fetch on the next poll."""
        self.waiting_since = None

    def queues_changed(self) -> None:
        """The channel consumes other queues now: track their prefixes, and fetch at once."""
        self.tracking_on = None  # the next switches send OFF, then ON with the new prefixes
        self.waiting_since = None

    def switches(self, sock: object, prefixes: Callable[[], list[str]]) -> list[Command]:
        """Tracking commands to send in front of the next fetch on the socket ``sock``."""
        if self.tracking_on is not None and self.tracking_on is not sock:
            self.tracking_on = None  # the fetch connection was replaced: the server forgot
        if self.wants_tracking and self.tracking_on is None:
            self.tracking_on = sock
            on: Command = ("CLIENT", "TRACKING", "ON", "REDIRECT", self.waiter.client_id, "BCAST")
            for prefix in prefixes():
                on = (*on, "PREFIX", prefix)
            return [("CLIENT", "TRACKING", "OFF"), (*on, "NOLOOP")]
        if not self.wants_tracking and self.tracking_on is not None:
            self.tracking_on = None
            return [("CLIENT", "TRACKING", "OFF")]
        return []

    def answered(self, found: bool, drained: bool = False) -> None:
        """Account for a fetch's reply: wait after an empty one sent with tracking on, and
        after one that took the lists' last message (``drained``) with tracking on."""
        if found and drained and self.tracking_on is not None:
            self.hits = 0
            self.waiting_since = self.clock()
            return
        if found:
            self.hits += 1
            if self.hits >= TRACKING_OFF_AFTER_HITS:
                self.wants_tracking = False
            return
        self.hits = 0
        if self.tracking_on is not None:
            self.waiting_since = self.clock()
        self.wants_tracking = True  # an empty fetch without tracking: arm it and fetch again

    def packed_call(self, connection: Any, brpop_args: tuple[Any, ...]) -> bytes:
        """The fetch script's call for kombu's BRPOP arguments (keys..., timeout), taking as
        many messages as this process's :func:`~taskfleet.routing.fetch_batch.sizer` allows."""
        keys = brpop_args[1:-1]
        packed = self._packed.get(keys)
        if packed is None:
            args = ("EVALSHA", self.sha, 3 + len(keys), *self.head_keys, *keys, "", "", "")
            chunks = b"".join(connection.pack_command(*args))
            head = chunks[: chunks.rindex(b"$0\r\n\r\n" * 3)]
            count, _, body = head.partition(b"\r\n")  # "*<argc>", then the arguments
            if len(self._packed) >= PACKED_CALLS_MAX:  # queues changed since: start over
                self._packed.clear()
            packed = self._packed[keys] = (int(count[1:]), body)
        argc, body = packed
        self.last_stamp = time()
        sizer = fetch_batch.sizer()
        kinds = () if sizer is None else sizer.short_kinds()
        if kinds != self._kinds[0]:  # the short kinds change rarely: packed once each time
            self._kinds = (kinds, b"".join(_bulk(kind.encode()) for kind in kinds))
        most = sizer.limit if kinds and sizer is not None else 1
        return (
            b"*%d\r\n" % (argc + len(kinds))
            + body
            + _bulk(repr(self.last_stamp).encode())
            + _bulk(b"1" if self.has_owner else b"0")
            + _bulk(b"%d" % most)
            + self._kinds[1]
        )
