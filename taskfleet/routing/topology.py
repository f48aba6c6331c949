"""Queues, their dead-letter queues, and which job kind goes where.

Each pool has one work queue (``cpu``, ``io``) and one dead-letter queue (``cpu.dlq``,
``io.dlq``), and the CPU pool one queue its standby worker waits on (``cpu.standby``, never
published to). With worker groups declared (``TASKFLEET_WORKER_GROUPS``), each pool also has
one queue per group (``cpu@eu``), dead-lettering into the pool's dead-letter queue. On
RabbitMQ the work queues carry ``x-max-priority`` and dead-letter into the ``taskfleet.dlx``
exchange; on Redis the same declarations are plain lists.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Literal

from kombu import Exchange, Queue

from taskfleet.config.groups import get_group_settings, group_queue
from taskfleet.config.settings import Settings
from taskfleet.routing.priority import MAX_PRIORITY

Pool = Literal["cpu", "io"]
DLX_EXCHANGE = "taskfleet.dlx"
#: The queue bare ``send_task`` callers publish to when they name none; the I/O pool
#: consumes it and forwards each job to its own pool's queue.
DEFAULT_INBOX = "celery"
#: Suffix of the queue a standby solo CPU worker consumes until it is promoted
#: (``taskfleet.workers.standby``): declared, and never published to.
STANDBY_SUFFIX = ".standby"

#: Job-kind patterns for tasks that are not imported where routing happens.
DEFAULT_KIND_ROUTES: tuple[tuple[str, Pool], ...] = (
    ("*.notify", "io"),
    ("io.*", "io"),
    ("contract.*", "cpu"),
    ("sandbox.*", "cpu"),
    ("cpu.*", "cpu"),
)


class UnknownJobKind(LookupError):
    """A job kind that no pool serves."""


@dataclass(frozen=True)
class Topology:
    """Queue names and declarations derived from settings."""

    cpu_queue: str
    io_queue: str
    dlq_suffix: str
    amqp: bool
    #: The worker groups (``TASKFLEET_WORKER_GROUPS``); empty: none.
    groups: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings, groups: tuple[str, ...] | None = None) -> Topology:
        """Build the topology for the configured broker (``groups``: default, the settings')."""
        if groups is None:
            groups = tuple(get_group_settings().worker_groups)
        return cls(
            settings.cpu_queue,
            settings.io_queue,
            settings.dlq_suffix,
            settings.broker_is_amqp,
            groups,
        )

    def queue_for_pool(self, pool: Pool) -> str:
        """Work queue of a pool."""
        return self.cpu_queue if pool == "cpu" else self.io_queue

    def dlq_for(self, queue: str) -> str:
        """Dead-letter queue of a work queue."""
        return f"{queue}{self.dlq_suffix}"

    def group_queues(self, pool: Pool) -> list[str]:
        """The queues of a pool's groups (``cpu@eu``, ``cpu@us``), in declared order."""
        return [group_queue(self.queue_for_pool(pool), group) for group in self.groups]

    def work_queue(self, pool: Pool, group: str | None = None) -> Queue:
        """The kombu declaration of a pool's work queue, or of its queue in ``group``."""
        base = self.queue_for_pool(pool)
        name = base if group is None else group_queue(base, group)
        arguments: dict[str, Any] = {"x-max-priority": MAX_PRIORITY}
        if self.amqp:
            arguments |= {
                "x-dead-letter-exchange": DLX_EXCHANGE,
                "x-dead-letter-routing-key": self.dlq_for(base),
            }
        return Queue(
            name, Exchange(name, type="direct"), routing_key=name, queue_arguments=arguments
        )

    @property
    def standby_queue(self) -> str:
        """The queue a standby solo CPU worker waits on (no job is ever routed to it)."""
        return f"{self.cpu_queue}{STANDBY_SUFFIX}"

    def standby(self) -> Queue:
        """The kombu declaration of :attr:`standby_queue` (a plain queue: it stays empty)."""
        name = self.standby_queue
        return Queue(name, Exchange(name, type="direct"), routing_key=name)

    def dead_letter_queue(self, pool: Pool) -> Queue:
        """The kombu declaration of a pool's dead-letter queue (never consumed by workers)."""
        name = self.dlq_for(self.queue_for_pool(pool))
        return Queue(name, Exchange(DLX_EXCHANGE, type="direct"), routing_key=name)

    def inbox(self) -> Queue:
        """Celery's default queue, where unrouted ``send_task`` messages land.

        Declared exactly as stock Celery declares it (no arguments), so a bare Celery app
        publishing to it on RabbitMQ does not fail with PRECONDITION_FAILED.
        """
        return Queue(
            DEFAULT_INBOX, Exchange(DEFAULT_INBOX, type="direct"), routing_key=DEFAULT_INBOX
        )

    def all_queues(self) -> list[Queue]:
        """Every queue taskfleet declares."""
        pools: tuple[Pool, ...] = ("cpu", "io")
        return (
            [self.work_queue(p) for p in pools]
            + [self.work_queue(p, group) for p in pools for group in self.groups]
            + [self.dead_letter_queue(p) for p in pools]
            + [self.standby(), self.inbox()]
        )


def pool_for_kind(kind: str, declared: dict[str, Pool] | None = None) -> Pool:
    """The pool that runs ``kind``: its task's declaration first, then the pattern table."""
    if declared and kind in declared:
        return declared[kind]
    for pattern, pool in DEFAULT_KIND_ROUTES:
        if fnmatch.fnmatchcase(kind, pattern):
            return pool
    raise UnknownJobKind(f"unknown job kind {kind!r}: no task of that name and no route for it")
