"""Inspect, replay and purge dead letters (the Python API behind ``taskfleet dlq``).

Replay publishes the original message again under a new id derived from the dead one
(``uuid5``), with ``taskfleet_replay_of`` linking back.

On RabbitMQ, dead letters are the messages in the broker's ``.dlq`` queues (read in place,
never consumed: ``broker_dlq``) joined with the metadata taskfleet's workers keep in Redis;
those the broker dead-lettered on its own (TTL, length limit, another client's reject) are
listed with ``origin="broker"`` and the ``x-death`` reason. ``replay`` and ``purge`` act on
both kinds. The new id is claimed with SET NX
first, and a job whose original already succeeded is not replayed, so replaying twice (or
from two shells at once) never runs a job twice.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import redis
from kombu import Connection, Exchange, Producer

from taskfleet.config import Settings, resolve_services
from taskfleet.resilience import broker_dlq
from taskfleet.resilience.deadletter import INDEX_PREFIX, META_AGES_SUFFIX, META_PREFIX, DeadLetter
from taskfleet.routing.depth import redis_priority_key
from taskfleet.routing.topology import Topology
from taskfleet.routing.wire import next_delivery_tag

REPLAY_NAMESPACE = uuid.UUID("0b7f2f4e-3c7a-4c57-9a51-7d0f4a1f9c21")
CLAIM_PREFIX = "taskfleet:idem:"
CLAIM_TTL_S = 7 * 24 * 3600
#: AMQP properties a republished broker dead letter keeps (not ``expiration``: it would die
#: again the same way).
REPUBLISHED_PROPERTIES = ("priority", "delivery_mode", "correlation_id", "reply_to", "message_id")


def replay_id_for(job_id: str) -> str:
    """The id a replay of ``job_id`` runs under (the same for every replay of it)."""
    return str(uuid.uuid5(REPLAY_NAMESPACE, f"replay\x00{job_id}"))


@dataclass(frozen=True)
class _Entry:
    """One dead letter and where it is kept (``raw``: its stored record on Redis)."""

    dlq: str
    letter: DeadLetter
    raw: bytes | None


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters an operation applies to (all unset: every one)."""

    queue: str | None = None
    kind: str | None = None
    reason: str | None = None
    older_than: float | None = None
    ids: frozenset[str] | None = None
    origin: str | None = None

    def matches(self, letter: DeadLetter) -> bool:
        """Whether ``letter`` is selected."""
        return (
            (self.queue is None or letter.queue == self.queue)
            and (self.kind is None or letter.kind == self.kind)
            and (self.reason is None or letter.reason == self.reason)
            and (self.older_than is None or letter.age >= self.older_than)
            and (self.ids is None or letter.id in self.ids)
            and (self.origin is None or letter.origin == self.origin)
        )


@dataclass
class ReplayReport:
    """What a replay did: new id per replayed job, and the ones left out and why."""

    replayed: dict[str, str] = field(default_factory=dict)
    already_succeeded: list[str] = field(default_factory=list)
    already_replayed: list[str] = field(default_factory=list)
    seconds: float = 0.0


class DeadLetterQueues:
    """The dead-letter queues of one fleet."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topology = Topology.from_settings(settings)
        urls = resolve_services(settings)
        self.redis = redis.Redis.from_url(urls.redis_url)
        self.broker_url = urls.broker_url
        self.store = redis.Redis.from_url(urls.broker_url) if settings.broker_is_redis else None

    @property
    def dlqs(self) -> list[str]:
        """Every dead-letter queue name."""
        return [self.topology.dlq_for(self.topology.queue_for_pool(p)) for p in ("cpu", "io")]

    def _entries(self) -> list[_Entry]:
        """Every dead letter with where it is kept; on RabbitMQ, the broker's messages merged
        with taskfleet's metadata (one entry per job id and queue)."""
        if self.store is not None:
            stored: list[tuple[str, bytes]] = [
                (dlq, bytes(raw))  # type: ignore[arg-type]
                for dlq in self.dlqs
                for raw in self.store.lrange(dlq, 0, -1)
            ]
            return [_Entry(dlq, DeadLetter.from_json(raw), raw) for dlq, raw in stored]
        entries: list[_Entry] = []
        meta: dict[str, dict[str, DeadLetter]] = {}
        for dlq in self.dlqs:
            records: list[bytes] = self.redis.hvals(META_PREFIX + dlq)  # type: ignore[assignment]
            meta[dlq] = {x.id: x for x in map(DeadLetter.from_json, records)}
        seen: set[tuple[str, str]] = set()
        for dlq, found in broker_dlq.scan(self.broker_url, self.dlqs):
            if (dlq, found.id) not in seen:
                seen.add((dlq, found.id))
                entries.append(_Entry(dlq, meta[dlq].get(found.id, found), None))
        for dlq, letters in meta.items():  # metadata whose broker copy is not (yet) there
            entries.extend(
                _Entry(dlq, x, None) for x in letters.values() if (dlq, x.id) not in seen
            )
        return entries

    def list(self, selection: DeadLetterFilter | None = None) -> list[DeadLetter]:
        """Dead letters, newest first, that match ``selection``."""
        selection = selection or DeadLetterFilter()
        letters = [e.letter for e in self._entries() if selection.matches(e.letter)]
        return sorted(letters, key=lambda x: -x.dead_at)

    def show(self, job_id: str) -> DeadLetter | None:
        """One dead letter by job id."""
        found = self.list(DeadLetterFilter(ids=frozenset({job_id})))
        return found[0] if found else None

    def _remove(self, entries: Sequence[_Entry]) -> None:
        """Delete the given dead letters: records and index (Redis); metadata and the
        broker's copies, requeueing every other message in place (RabbitMQ)."""
        if not entries:
            return
        if self.store is not None:
            pipe = self.store.pipeline(transaction=True)
            for entry in entries:
                pipe.lrem(entry.dlq, 1, entry.raw)  # type: ignore[arg-type]
                pipe.hdel(INDEX_PREFIX + entry.dlq, entry.letter.id)
            pipe.execute()
            return
        by_dlq: dict[str, set[str]] = {}
        for entry in entries:
            by_dlq.setdefault(entry.dlq, set()).add(entry.letter.id)
        for dlq, ids in by_dlq.items():
            self.redis.hdel(META_PREFIX + dlq, *ids)
            self.redis.zrem(META_PREFIX + dlq + META_AGES_SUFFIX, *ids)
            broker_dlq.remove(self.broker_url, dlq, ids)

    def _succeeded(self, job_id: str) -> bool:
        raw = self.redis.get(f"celery-task-meta-{job_id}")
        return raw is not None and json.loads(raw).get("status") == "SUCCESS"

    def replay(self, selection: DeadLetterFilter | None = None) -> ReplayReport:
        """Publish the selected dead jobs again (each at most once) and remove them.

        A job (a message with a Celery ``task`` header, whoever dead-lettered it) runs under
        :func:`replay_id_for` its id. Any other message the broker dead-lettered is published
        unchanged, minus the broker's death headers and expiration, to the exchange and
        routing key it died from; its replay keeps its id.
        """
        start = time.monotonic()
        report = ReplayReport()
        selection = selection or DeadLetterFilter()
        done: list[_Entry] = []
        for entry in self._entries():
            letter = entry.letter
            if not selection.matches(letter):
                continue
            new_id = replay_id_for(letter.id)
            if self._succeeded(letter.id) or self._succeeded(new_id):
                report.already_succeeded.append(letter.id)
            elif not self.redis.set(CLAIM_PREFIX + new_id, letter.kind, nx=True, ex=CLAIM_TTL_S):
                report.already_replayed.append(letter.id)
            elif letter.kind or letter.origin == "taskfleet":
                self._publish(letter, new_id)
                report.replayed[letter.id] = new_id
            else:
                self._republish(letter)
                report.replayed[letter.id] = letter.id
            done.append(entry)
        self._remove(done)
        report.seconds = time.monotonic() - start
        return report

    def purge(self, selection: DeadLetterFilter | None = None) -> int:
        """Delete the selected dead letters (either origin); returns how many."""
        selection = selection or DeadLetterFilter()
        chosen = [e for e in self._entries() if selection.matches(e.letter)]
        self._remove(chosen)
        return len(chosen)

    def _republish(self, letter: DeadLetter) -> None:
        """Send a non-taskfleet message the broker dead-lettered back where it came from."""
        message = letter.message
        headers = {
            k: v
            for k, v in (message.get("headers") or {}).items()
            if k not in broker_dlq.DEATH_HEADERS
        }
        death = broker_dlq.last_death(message.get("headers") or {})
        keys = death.get("routing-keys") or [letter.queue]
        properties = {
            k: v
            for k, v in (message.get("properties") or {}).items()
            if k in REPUBLISHED_PROPERTIES
        }
        with Connection(self.broker_url) as conn:
            Producer(conn.channel()).publish(
                base64.b64decode(message.get("body") or ""),
                exchange=str(death.get("exchange") or ""),
                routing_key=str(keys[0]),
                headers=headers,
                content_type=message.get("content-type") or "application/octet-stream",
                content_encoding=message.get("content-encoding") or "binary",
                **properties,
            )

    def _publish(self, letter: DeadLetter, new_id: str) -> None:
        message = letter.message
        headers = dict(message.get("headers") or {})
        headers.update(id=new_id, root_id=new_id, retries=0, taskfleet_replay_of=letter.id)
        properties = dict(message.get("properties") or {})
        queue = letter.queue or self.topology.io_queue
        priority = int(properties.get("priority") or 0)
        body = base64.b64decode(message.get("body") or "")
        if self.store is not None:
            envelope = {
                "body": base64.b64encode(body).decode(),
                "content-encoding": message.get("content-encoding") or "utf-8",
                "content-type": message.get("content-type") or "application/json",
                "headers": headers,
                "properties": {
                    **properties,
                    "correlation_id": new_id,
                    "priority": priority,
                    "body_encoding": "base64",
                    "delivery_info": {"exchange": queue, "routing_key": queue},
                    "delivery_tag": next_delivery_tag(),
                },
            }
            self.store.lpush(redis_priority_key(queue, priority), json.dumps(envelope))
            return
        with Connection(self.broker_url) as conn:
            Producer(conn.channel()).publish(
                body,
                exchange=Exchange(queue, type="direct"),
                routing_key=queue,
                headers=headers,
                content_type=message.get("content-type") or "application/json",
                content_encoding=message.get("content-encoding") or "utf-8",
                correlation_id=new_id,
                priority=priority,
                delivery_mode=2,
            )


def select(
    *,
    queue: str | None = None,
    kind: str | None = None,
    reason: str | None = None,
    older_than: float | None = None,
    ids: Iterable[str] | None = None,
    origin: str | None = None,
) -> DeadLetterFilter:
    """Build a filter (``ids`` None means any id)."""
    return DeadLetterFilter(
        queue, kind, reason, older_than, frozenset(ids) if ids else None, origin
    )
