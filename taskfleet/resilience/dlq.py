"""Inspect, replay and purge dead letters (the Python API behind ``taskfleet dlq``).

Replay publishes the original message again under a new id derived from the dead one
(``uuid5``), with ``taskfleet_replay_of`` linking back. The new id is claimed with SET NX
first, and a job whose original already succeeded is not replayed, so replaying twice (or
from two shells at once) never runs a job twice.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis
from kombu import Connection, Exchange, Producer

from taskfleet.config import Settings, resolve_services
from taskfleet.resilience.deadletter import INDEX_PREFIX, META_PREFIX, DeadLetter
from taskfleet.routing.depth import redis_priority_key
from taskfleet.routing.topology import Topology
from taskfleet.routing.wire import next_delivery_tag

REPLAY_NAMESPACE = uuid.UUID("0b7f2f4e-3c7a-4c57-9a51-7d0f4a1f9c21")
CLAIM_PREFIX = "taskfleet:idem:"
CLAIM_TTL_S = 7 * 24 * 3600


def replay_id_for(job_id: str) -> str:
    """The id a replay of ``job_id`` runs under (the same for every replay of it)."""
    return str(uuid.uuid5(REPLAY_NAMESPACE, f"replay\x00{job_id}"))


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters an operation applies to (all unset: every one)."""

    queue: str | None = None
    kind: str | None = None
    reason: str | None = None
    older_than: float | None = None
    ids: frozenset[str] | None = None

    def matches(self, letter: DeadLetter) -> bool:
        """Whether ``letter`` is selected."""
        return (
            (self.queue is None or letter.queue == self.queue)
            and (self.kind is None or letter.kind == self.kind)
            and (self.reason is None or letter.reason == self.reason)
            and (self.older_than is None or letter.age >= self.older_than)
            and (self.ids is None or letter.id in self.ids)
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

    def _raw(self) -> list[tuple[str, bytes]]:
        rows: list[tuple[str, bytes]] = []
        for dlq in self.dlqs:
            if self.store is not None:
                rows.extend((dlq, bytes(raw)) for raw in self.store.lrange(dlq, 0, -1))  # type: ignore[arg-type]
            else:
                rows.extend((dlq, bytes(raw)) for raw in self.redis.hvals(META_PREFIX + dlq))  # type: ignore[arg-type]
        return rows

    def list(self, selection: DeadLetterFilter | None = None) -> list[DeadLetter]:
        """Dead letters, newest first, that match ``selection``."""
        selection = selection or DeadLetterFilter()
        letters = [DeadLetter.from_json(raw) for _, raw in self._raw()]
        return sorted((x for x in letters if selection.matches(x)), key=lambda x: -x.dead_at)

    def show(self, job_id: str) -> DeadLetter | None:
        """One dead letter by job id."""
        found = self.list(DeadLetterFilter(ids=frozenset({job_id})))
        return found[0] if found else None

    def _remove(self, dlq: str, raw: bytes, job_id: str) -> None:
        if self.store is not None:
            pipe = self.store.pipeline(transaction=True)
            pipe.lrem(dlq, 1, raw)  # type: ignore[arg-type]
            pipe.hdel(INDEX_PREFIX + dlq, job_id)
            pipe.execute()
        else:
            self.redis.hdel(META_PREFIX + dlq, job_id)
            self._drain_amqp(dlq, {job_id})

    def _drain_amqp(self, dlq: str, ids: set[str]) -> None:
        """Remove the broker's copies of ``ids`` from a RabbitMQ dead-letter queue."""
        with Connection(self.broker_url) as conn:
            channel = conn.default_channel.connection.client.channel()  # raw py-amqp channel
            others: list[int] = []
            while True:  # held unacked until the end, so none comes back during the scan
                message = channel.basic_get(dlq, no_ack=False)
                if message is None:
                    break
                headers = message.properties.get("application_headers") or {}
                if headers.get("id") in ids:
                    channel.basic_ack(message.delivery_tag)
                else:
                    others.append(message.delivery_tag)
            for tag in others:
                channel.basic_reject(tag, requeue=True)
            channel.close()

    def _succeeded(self, job_id: str) -> bool:
        raw = self.redis.get(f"celery-task-meta-{job_id}")
        return raw is not None and json.loads(raw).get("status") == "SUCCESS"

    def replay(self, selection: DeadLetterFilter | None = None) -> ReplayReport:
        """Publish the selected dead jobs again (each at most once) and remove them."""
        start = time.monotonic()
        report = ReplayReport()
        selection = selection or DeadLetterFilter()
        for dlq, raw in self._raw():
            letter = DeadLetter.from_json(raw)
            if not selection.matches(letter):
                continue
            new_id = replay_id_for(letter.id)
            if self._succeeded(letter.id) or self._succeeded(new_id):
                report.already_succeeded.append(letter.id)
            elif not self.redis.set(CLAIM_PREFIX + new_id, letter.kind, nx=True, ex=CLAIM_TTL_S):
                report.already_replayed.append(letter.id)
            else:
                self._publish(letter, new_id)
                report.replayed[letter.id] = new_id
            self._remove(dlq, raw, letter.id)
        report.seconds = time.monotonic() - start
        return report

    def purge(self, selection: DeadLetterFilter | None = None) -> int:
        """Delete the selected dead letters; returns how many."""
        selection = selection or DeadLetterFilter()
        count = 0
        for dlq, raw in self._raw():
            letter = DeadLetter.from_json(raw)
            if selection.matches(letter):
                self._remove(dlq, raw, letter.id)
                count += 1
        return count

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
) -> DeadLetterFilter:
    """Build a filter (``ids`` None means any id)."""
    return DeadLetterFilter(queue, kind, reason, older_than, frozenset(ids) if ids else None)
