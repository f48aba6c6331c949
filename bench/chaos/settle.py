"""When a scenario's fleet has settled, and the final counts once it has.

Settled means every sent job is final (SUCCESS or dead-lettered), or nothing can move any
more: no queue depth, nothing in Redis's ``unacked`` hash, no execution still running. A
deadline bounds the wait; jobs left then are reported as lost, with where they are stuck.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any

import redis
from kombu import Connection

from bench.chaos.ledger import Ledger
from bench.chaos.load import Producer
from bench.chaos.report import Row
from taskfleet.config import Settings
from taskfleet.devstack.processes import pid_alive
from taskfleet.routing.depth import amqp_queue_depths, redis_queue_depths

#: kombu's Redis transport keeps delivered, not yet acknowledged messages in this hash.
UNACKED_KEY = "unacked"
SETTLE_POLL_S = 0.25
SCAN_COUNT = 1000


@dataclass
class Backlog:
    """Where unfinished jobs are: queued, delivered but unacknowledged, running."""

    queued: int
    unacked: set[str]
    running: int

    @property
    def empty(self) -> bool:
        """Nothing anywhere."""
        return not (self.queued or self.unacked or self.running)


class Settler:
    """Waits for a fleet to settle and counts what happened.

    Args:
        settings: The fleet's settings.
        ledger: Its ledger.
        producer: Its producer (the sent ids).
    """

    def __init__(self, settings: Settings, ledger: Ledger, producer: Producer) -> None:
        """Bind to the fleet."""
        self.settings = settings
        self.ledger = ledger
        self.producer = producer
        self.queues = [settings.cpu_queue, settings.io_queue]

    def backlog(self) -> Backlog:
        """Where unfinished work is, as the broker and the execution log see it."""
        unacked: set[str] = set()
        if self.settings.broker_is_redis:
            client = redis.Redis.from_url(str(self.settings.broker_url))
            try:
                queued = sum(redis_queue_depths(client, self.queues).values())
                for raw in client.hvals(UNACKED_KEY):
                    with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
                        unacked.add(str(json.loads(raw)[0]["headers"]["id"]))
            finally:
                client.close()
        else:
            with Connection(str(self.settings.broker_url)) as conn:
                queued = sum(amqp_queue_depths(conn, self.queues).values())
        running = sum(pid_alive(p) for p in self.ledger.executions().unfinished_pids())
        return Backlog(queued, unacked, running)

    def keys_holding(self, ids: set[str]) -> dict[str, int]:
        """Broker keys (lists, hashes, sets) whose values mention one of ``ids``, with counts.

        The scenario's Redis is its own and small: a scan finds a message the queue and
        ``unacked`` checks do not look at (a reclaimer's key, an unexpected list).
        """
        client = redis.Redis.from_url(str(self.settings.broker_url))
        found: dict[str, int] = {}
        try:
            for key in client.scan_iter(count=SCAN_COUNT):
                if key == self.ledger.log_key.encode():
                    continue
                values = b"\n".join(_values(client, key))
                hits = sum(1 for i in ids if i.encode() in values)
                if hits:
                    found[key.decode(errors="replace")] = hits
        finally:
            client.close()
        return found

    def final(self) -> bool:
        """Whether every sent job has a SUCCESS result or a dead letter."""
        ids = self.producer.ids()
        pending = sorted(set(ids) - self.ledger.ok_in_redis(ids))
        if pending:
            pending = sorted(set(pending) - self.ledger.ok_in_postgres(pending))
        if pending:
            pending = sorted(set(pending) - self.ledger.dead_lettered(pending))
        return not pending

    def settled(self) -> bool:
        """Final, or nothing left that could still move (see the module docstring)."""
        try:
            return self.final() or self.backlog().empty
        except (redis.RedisError, OSError):
            return False  # a service is still down: not settled

    def wait(self, quiet_s: float, cap_s: float) -> bool:
        """Wait until settled: give up after ``quiet_s`` without a job finishing, or ``cap_s``.

        A fleet still draining its queue is not stuck: each newly finished job extends the
        wait (up to ``cap_s`` in all), while jobs stuck where nothing moves end it.
        """
        cap = time.monotonic() + cap_s
        done = self.done_count()
        quiet_until = min(cap, time.monotonic() + quiet_s)
        while time.monotonic() < quiet_until:
            if self.settled():
                return True
            now_done = self.done_count()
            if now_done > done:  # progress: the quiet period starts again
                done = now_done
                quiet_until = min(cap, time.monotonic() + quiet_s)
            time.sleep(SETTLE_POLL_S)
        return self.settled()

    def done_count(self) -> int:
        """Completions logged so far (0 while Redis is unreachable)."""
        try:
            return sum(len(d) for d in self.ledger.executions().dones.values())
        except (redis.RedisError, OSError):
            return 0

    def fill(self, row: Row, *, expect_dead_letters: bool = False) -> Row:
        """Count sent, ok, lost, duplicated and dead-lettered into ``row``; add problems."""
        ids = self.producer.ids()
        ok = self.ledger.ok_in_redis(ids) | self.ledger.ok_in_postgres(ids)
        dead = self.ledger.dead_lettered(ids)
        lost = set(ids) - ok - dead
        row.sent, row.ok, row.dead_lettered, row.lost = len(ids), len(ok), len(dead), len(lost)
        row.duplicated = self.ledger.executions().duplicated(ids)
        if self.producer.refused:
            row.notes.append(f"{self.producer.refused} enqueue calls refused during the fault")
        if lost:
            where = self.backlog()
            stuck = len(lost & where.unacked)
            row.problems.append(f"{len(lost)} lost")
            states = self.ledger.states(sorted(lost))
            elsewhere = self.keys_holding(lost) if self.settings.broker_is_redis else {}
            never = len(lost - set(self.ledger.executions().starts))
            row.notes.append(
                f"lost: {stuck} in unacked, {where.queued} queued, {where.running} running, "
                f"{never} never started; results: "
                + ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
                + "".join(f"; {n} in {key}" for key, n in sorted(elsewhere.items()))
            )
        if row.duplicated > row.mid_execution:
            row.problems.append(
                f"{row.duplicated} duplicated > {row.mid_execution} mid-execution at the fault"
            )
        if dead and not expect_dead_letters:
            row.problems.append(f"{len(dead)} dead-lettered")
        return row


def _values(client: redis.Redis, key: bytes) -> list[bytes]:
    """The values of a list, hash, set or sorted set (nothing for other types)."""
    kind = client.type(key)
    if kind == b"list":
        raw: Any = client.lrange(key, 0, -1)
    elif kind == b"hash":
        raw = client.hvals(key)
    elif kind in (b"set", b"zset"):
        raw = client.smembers(key) if kind == b"set" else client.zrange(key, 0, -1)
    else:
        return []
    return [v for v in raw if isinstance(v, bytes)]
