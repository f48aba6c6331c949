"""The unacked bookkeeping of taskfleet's Redis transport: when its writes reach Redis.

kombu's Redis transport records every delivery in an ``unacked`` hash and index (so a job
whose consumer dies is restored after the visibility timeout) and removes it on ack; stock
kombu makes each of those writes a synchronous round trip. With ``acks_late`` that is three
round trips per job in the prefork parent, the process every job passes through. When an
event loop drives the transport, this QoS instead:

* **records a delivery in the same write as the next BRPOP.** The record is queued while
  the delivery is handled and sent, on the fetch connection, in front of the BRPOP that the
  same loop iteration issues, each command preceded by ``CLIENT REPLY SKIP`` so that only
  the BRPOP answers (an early reply would wake the loop for nothing). Redis executes a
  connection's commands in order, so the record lands before that BRPOP blocks, before the
  job reaches a pool process. Servers without ``CLIENT REPLY`` (probed once per connection)
  get the records on a second connection instead, as before.
* **removes acked deliveries later, in batches.** A removal waits for the next write (a
  record, or the timer's flush every ``ACK_FLUSH_INTERVAL_S``, or ``ACK_BATCH_MAX`` waiting)
  and goes on the same fetch connection, so it can never overtake its record. Behind a
  BRPOP that is still waiting it runs when that BRPOP returns (within its 1 s timeout).

Writes whose landing is not yet confirmed (their connection has not answered since) are
kept: they are sent again, synchronously, when the connection drops, when a job is rejected
and when the channel closes, and they are idempotent (ZADD/HSET of the same record, ZREM/HDEL
of a tag). A crash that loses a pending removal leaves the entry for kombu's restore: the
job runs again, which the at-least-once contract and keyed results absorb.

In a worker, every record also names its consumer: ``HSET taskfleet:owner:<id>:tags <tag>
<stamp>`` rides in the same write as the ``ZADD``/``HSET`` (and its removal with the
``ZREM``/``HDEL``), so a dead worker's deliveries are found and restored within seconds
(``taskfleet.routing.owners``, ``taskfleet.routing.reclaim``) at no extra round trip.
"""

from __future__ import annotations

import logging
from time import time
from typing import Any

import orjson
import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps

from taskfleet.results.late_replies import Command, LateReplies, packed
from taskfleet.results.pipelining import flush_coalesced
from taskfleet.routing import deferred_restore, owners
from taskfleet.routing.restore import restore_pushes

log = logging.getLogger(__name__)

#: Longest time an ack's Redis bookkeeping waits for a write to ride on.
ACK_FLUSH_INTERVAL_S = 0.02
#: Pending acks that force a flush on their own.
ACK_BATCH_MAX = 64
#: Stamps kept beyond twice the held deliveries before the finished ones are dropped.
STAMPS_PRUNE_AT = 256
#: An owner's removal of acked deliveries. A tag the owner no longer holds was restored by
#: a reclaimer (the owner looked dead) and may be another consumer's now: its record stays.
#: EVAL, not EVALSHA: removals mostly go with replies skipped, where a NOSCRIPT would be
#: silent, and Redis caches the compiled script by its digest anyway.
#: ARGV: tag, stamp pairs (an empty stamp: any stamp). A tag held again since, under a new
#: stamp (handed over and fetched again by the same worker), is the new delivery's.
REMOVE_HELD_LUA = """
for i = 1, #ARGV, 2 do
  local held = redis.call('HGET', KEYS[3], ARGV[i])
  if held and (ARGV[i + 1] == '' or tonumber(held) == tonumber(ARGV[i + 1])) then
    redis.call('HDEL', KEYS[3], ARGV[i])
    redis.call('ZREM', KEYS[2], ARGV[i])
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
"""


def _record(fields: list[Any]) -> bytes | str:
    """The unacked hash's value, as kombu writes it; orjson is ~20x faster than kombu's
    ``dumps`` on a delivery (0.5 against 11 us), which the prefork parent pays per job."""
    try:
        return orjson.dumps(fields)
    except TypeError:  # a value kombu's own encoder knows how to write
        return str(dumps(fields))


#: Set in workers that run each job inline, inside its delivery (solo pool).
_jobs_run_inline = False


def run_jobs_inline(inline: bool = True) -> None:
    """This process runs each job inside its delivery (a solo worker): send every record
    as soon as it is made, since the next BRPOP it would ride on comes after the job.

    Without it a solo worker's running job had no unacked record at all (its ack dropped
    the record before it was ever sent), and a worker dying mid-job lost the job.
    """
    global _jobs_run_inline
    _jobs_run_inline = inline


class BatchedQoS(kombu_redis.QoS):  # type: ignore[misc]
    """Kombu's Redis QoS with its bookkeeping writes merged and batched (see module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending_acks: list[Any] = []
        self._unsent_records: dict[Any, list[Command]] = {}
        self._unconfirmed_records: dict[Any, list[Command]] = {}
        self._unconfirmed_removals: list[Any] = []
        self._writer: LateReplies | None = None
        owner = owners.current()
        #: The hash tying this worker's deliveries to it (None: no owner, stock bookkeeping).
        self._owner_tags: str | None = None if owner is None else owner.tags_key
        #: Owned deliveries' record stamps, until their removal is sent (see _removals).
        self._stamps: dict[Any, float] = {}
        if deferred_restore.pending():
            self._disown(deferred_restore.restore_deferred(self))

    @property
    def owner_tags_key(self) -> str | None:
        """The hash tying this worker's deliveries to it (None: no owner)."""
        return self._owner_tags

    @property
    def batching(self) -> bool:
        """True once an event loop drives the transport (its timer then flushes acks)."""
        return bool(getattr(self.channel.connection, "batch_acks", False))

    def append(self, message: Any, delivery_tag: Any) -> None:
        """Record a delivery as unacked: with the next BRPOP when one is about to be sent."""
        if getattr(self.channel, "delivery_recorded", False):  # the fetch script did it
            self._stamped(message, delivery_tag, self.channel.recorded_stamp)
            virtual.QoS.append(self, message, delivery_tag)
            return
        delivery = message.delivery_info
        stamp = time()
        self._stamped(message, delivery_tag, stamp)
        record: list[Command] = [
            ("ZADD", self.unacked_index_key, stamp, delivery_tag),
            (
                "HSET",
                self.unacked_key,
                delivery_tag,
                _record([message._raw, delivery["exchange"], delivery["routing_key"]]),
            ),
        ]
        if self._owner_tags is not None:
            record.append(("HSET", self._owner_tags, delivery_tag, stamp))
        if not self.batching:
            self._execute([*self._take_removals(), *record])
        elif getattr(self.channel, "delivering", False) and not _jobs_run_inline:
            self._unsent_records[delivery_tag] = record
        elif getattr(self.channel, "delivering", False):
            # A solo worker runs the job before its next BRPOP: the record goes first, alone.
            if self.channel.send_on_fetch_connection(record):
                self._unconfirmed_records[delivery_tag] = record
            else:
                self._send_on_writer(record)
        else:
            self._send_on_writer([*self._take_removals(), *record])
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: Any) -> None:
        """Acknowledge now; remove from the unacked index with a later write."""
        if not self.batching:  # stock kombu's synchronous removal, with the owner's entry
            self._execute(self._removals([delivery_tag]))
            virtual.QoS.ack(self, delivery_tag)
            return
        # A record not sent yet (queued again after a dropped connection) is never sent now:
        # on another connection than this removal, it could land after it.
        self._unsent_records.pop(delivery_tag, None)
        self._pending_acks.append(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)
        if len(self._pending_acks) >= ACK_BATCH_MAX:
            self.flush_acks()

    def _stamped(self, message: Any, tag: Any, stamp: float | None) -> None:
        """Remember the record's stamp: on the message (``ownership.stamp`` sends it with
        the job) and, for an owner, until the delivery's removal is built."""
        message.record_stamp = stamp
        if self._owner_tags is None or stamp is None:
            return
        self._stamps[tag] = stamp
        if len(self._stamps) > STAMPS_PRUNE_AT + 2 * len(self._delivered):
            # Keep the deliveries still held or whose removal may still be built.
            keep = {*self._delivered, *self._pending_acks, *self._unconfirmed_removals}
            self._stamps = {t: s for t, s in self._stamps.items() if t in keep}

    def has_fetch_prefix(self) -> bool:
        """Whether any write waits for the next BRPOP."""
        return bool(self._unsent_records or self._pending_acks)

    def take_fetch_prefix(self) -> list[Command]:
        """The writes to send in front of the next BRPOP (records first, then removals)."""
        tags, self._pending_acks = self._pending_acks, []
        records = self._take_records()
        self._unconfirmed_removals.extend(tags)
        return [*records, *self._removals(tags)]

    def flush_acks(self) -> None:
        """Send the pending removals, if any: behind the fetch when that connection allows."""
        if not self._pending_acks:
            return
        if self.channel.send_on_fetch_connection(self._removals(self._pending_acks)):
            self._unconfirmed_removals.extend(self._pending_acks)
            self._pending_acks = []
        else:
            self._send_on_writer(self._take_removals())

    def flush_records(self) -> None:
        """Send records that found no BRPOP to ride on (the channel was full)."""
        if not self._unsent_records:
            return
        unsent = dict(self._unsent_records)
        records = self._take_records()
        removals = self._pending_acks  # they ride along, after the records
        commands = [*records, *self._removals(removals)]
        if self.channel.send_on_fetch_connection(commands, idle_only=True):
            self._unconfirmed_removals.extend(removals)
            self._pending_acks = []
        else:
            for tag in unsent:  # the writer's replies confirm them
                del self._unconfirmed_records[tag]
            self._send_on_writer(records)

    def fetch_answered(self) -> None:
        """The fetch connection answered: every write sent on it before has landed."""
        self._unconfirmed_records.clear()
        self._unconfirmed_removals.clear()

    def fetch_lost(self) -> None:
        """The fetch connection dropped: queue its unconfirmed writes again."""
        self._unsent_records = {**self._still_delivered(), **self._unsent_records}
        self._pending_acks[:0] = self._unconfirmed_removals
        self.fetch_answered()

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        """Land every earlier write first: the record must exist before it is restored."""
        self._settle()
        super().reject(delivery_tag, requeue=requeue)
        self._disown([delivery_tag])

    def return_undelivered(self, payloads: list[dict[str, Any]]) -> None:
        """Put deliveries the fetch script recorded and nobody ran (the rest of a batch,
        ``taskfleet.routing.fetch_batch``) back at the head of their queue, in their order,
        not marked ``redelivered``, and drop them from the owner. With Redis unreachable,
        the process's next channel restores them (:mod:`.deferred_restore`)."""
        tags = [payload["properties"]["delivery_tag"] for payload in payloads]
        try:
            with self.channel.conn_or_acquire() as conn:
                for tag in reversed(tags):  # each goes in front of the one after it
                    self._put_back(tag, conn)
        except deferred_restore.UNREACHABLE as exc:
            held: dict[Any, tuple[Any, str, str]] = {}
            for payload in payloads:
                info = payload["properties"].get("delivery_info") or {}
                held[payload["properties"]["delivery_tag"]] = (
                    payload,
                    str(info.get("exchange") or ""),
                    str(info.get("routing_key") or ""),
                )
            deferred_restore.defer(self.unacked_key, held, exc)
            return
        self._disown(tags)

    def _put_back(self, tag: Any, client: Any) -> None:
        """kombu's ``restore_by_tag`` (one transaction watching ``unacked``; the same
        queue, sub-list and side), except that the message keeps the ``redelivered`` marks
        it had: a batch's rest never ran, and a mark would make the next worker look its
        result up (Redis, then Postgres) and count it towards the poison-pill limit."""

        def transaction(pipe: Any) -> None:
            record = pipe.hget(self.unacked_key, tag)
            pipe.multi()
            self._remove_from_indices(tag, pipe)
            if record:
                for command, key, body in restore_pushes(
                    self.channel, record, mark_redelivered=False
                ):
                    (pipe.lpush if command == "LPUSH" else pipe.rpush)(key, body)

        client.transaction(transaction, self.unacked_key)

    def restore_unacked(self, client: Any = None) -> None:
        """Land every write, so a clean shutdown never re-runs a finished job.

        With Redis unreachable (the usual reason a channel closes with deliveries held), what
        is not restored is kept for the process's next channel (:mod:`.deferred_restore`).
        Acked deliveries are forgotten first (kombu keeps them in ``_delivered`` until its
        next flush): restoring one by its tag would take the record of whoever holds that
        tag now, after a reclaimer handed it over, and run the job again.
        """
        self._flush()
        held = deferred_restore.held(self._delivered)
        try:
            self._settle()
            self._release_writer()
            with self.channel.conn_or_acquire(client) as conn:
                for tag in list(self._delivered):
                    self.restore_by_tag(tag, client=conn)
                    del held[tag]
        except deferred_restore.UNREACHABLE as exc:
            deferred_restore.defer(self.unacked_key, held, exc)
        else:
            self._disown(list(self._delivered))
        self._delivered.clear()
        self._stamps.clear()

    def _disown(self, tags: list[Any]) -> None:
        """Drop deliveries kombu restored or removed from the owner's hash (best effort: a
        stale entry is skipped by the reclaimer, whose checks it fails)."""
        if self._owner_tags is None or not tags:
            return
        try:
            self._execute([("HDEL", self._owner_tags, *tags)])
        except redis.RedisError as exc:
            log.warning(
                "could not drop %d restored deliveries from their owner: %s", len(tags), exc
            )

    def _settle(self) -> None:
        """Send, and wait for, every write that has not been confirmed yet."""
        removals = self._unconfirmed_removals + self._pending_acks
        records = {**self._still_delivered(), **self._unsent_records}
        commands = [*(c for record in records.values() for c in record), *self._removals(removals)]
        self._confirm_writer()
        self._unsent_records, self._pending_acks = {}, []
        self._unconfirmed_records, self._unconfirmed_removals = {}, []
        if commands:
            self._execute(commands)

    def _take_records(self) -> list[Command]:
        """The unsent records, now counted as unconfirmed."""
        unsent, self._unsent_records = self._unsent_records, {}
        self._unconfirmed_records.update(unsent)
        return [command for record in unsent.values() for command in record]

    def _still_delivered(self) -> dict[Any, list[Command]]:
        """Unconfirmed records of jobs not acked since (an acked job's record stays gone)."""
        acked = self._dirty  # acked, still in _delivered until kombu's next flush
        return {
            t: r
            for t, r in self._unconfirmed_records.items()
            if t in self._delivered and t not in acked
        }

    def _take_removals(self) -> list[Command]:
        tags, self._pending_acks = self._pending_acks, []
        return self._removals(tags)

    def _removals(self, tags: list[Any]) -> list[Command]:
        if not tags:
            return []
        # Results a batch still holds leave before any acknowledgement does.
        flush_coalesced()
        if self._owner_tags is not None:  # only what the owner still holds, as it got it
            keys = (self.unacked_key, self.unacked_index_key, self._owner_tags)
            held = [a for tag in tags for a in (tag, self._stamps.get(tag, ""))]
            return [("EVAL", REMOVE_HELD_LUA, len(keys), *keys, *held)]
        return [("ZREM", self.unacked_index_key, *tags), ("HDEL", self.unacked_key, *tags)]

    def _execute(self, commands: list[Command]) -> None:
        # No MULTI/EXEC (kombu's default): no reader needs these writes to land together.
        pipe = self.channel._create_client().pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        pipe.execute()

    def _send_on_writer(self, commands: list[Command]) -> None:
        """Write on the QoS's own connection without waiting for the replies.

        The previous write's replies are read first (by then they have long arrived), so an
        error reply is still seen and logged, one job later.
        """
        if not commands:
            return
        pool = self.channel.pool
        if self._writer is None or self._writer.pool is not pool:  # kombu replaced its pool
            self._release_writer()
            self._writer = LateReplies(pool)
        self._confirm_writer()
        self._writer.send([packed(commands)], replies=len(commands))

    def _confirm_writer(self) -> None:
        """Read the writer's owed replies: log refusals, raise a broken link (as kombu would)."""
        if self._writer is None:
            return
        for reply in self._writer.collect():
            if isinstance(reply, redis.ResponseError):
                log.error("Redis refused unacked-index bookkeeping: %s", reply)
            elif isinstance(reply, Exception):
                raise reply

    def _release_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.collect()  # whatever the outcome: the connection closes now
            writer.drop()
