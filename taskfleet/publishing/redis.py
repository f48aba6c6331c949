"""Publishing to a Redis broker: envelopes rendered from templates, claim and push in one script.

kombu's Redis transport stores a message as a JSON envelope in its queue's priority sub-list.
Every job, from ``enqueue`` or ``enqueue_many``, is rendered from an
:class:`~taskfleet.routing.wire.EnvelopeTemplate` (one %-format per job instead of a dict
build and a JSON encode), cached per kind, queue, priority, client id and keyed-ness. Unkeyed
batches go out as one pipeline of multi-value LPUSHes; a batch with a keyed job as one call of
:data:`taskfleet.claims.CLAIM_AND_PUSH_LUA`, which pushes and then claims atomically.
:class:`AsyncRedisPublisher` does the same on ``redis.asyncio`` (for ``AsyncClient``).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from typing import ClassVar, NamedTuple

import redis
import redis.asyncio

from taskfleet.claims import CLAIM_AND_PUSH_LUA, claim_and_push_args, push_groups
from taskfleet.config.settings import REDIS_SCHEMES
from taskfleet.publishing.base import PreparedJobs, PublisherConfig, extra_headers
from taskfleet.routing.depth import redis_priority_key
from taskfleet.routing.wire import EnvelopeTemplate

#: Envelope templates kept per process (a template per kind, queue, priority, client id,
#: keyed-ness); past this many, the least recently used is rebuilt when next needed.
TEMPLATE_CACHE_SIZE = 1024


@functools.lru_cache(maxsize=TEMPLATE_CACHE_SIZE)
def _template(
    kind: str, queue: str, priority: int, client_id: str | None, keyed: bool
) -> tuple[EnvelopeTemplate, str]:
    """The envelope template of a job and the priority sub-list it goes to."""
    template = EnvelopeTemplate(kind, queue, priority, extra_headers(client_id), keyed=keyed)
    return template, redis_priority_key(queue, priority)


def _stamped(
    cached: tuple[EnvelopeTemplate, str], sent_at: float, headers: dict[str, str]
) -> tuple[EnvelopeTemplate, str]:
    template, list_key = cached
    return template.stamped(sent_at, headers), list_key


# A template holds its process's delivery-tag prefix: a forked child must build its own.
os.register_at_fork(after_in_child=_template.cache_clear)


class RedisBatch(NamedTuple):
    """Prepared jobs as the Redis broker takes them."""

    job_ids: list[str]
    lists: list[str]
    envelopes: list[bytes]
    #: Per job its id if it is keyed, else None; empty when no job is keyed.
    keyed_ids: list[str | None]
    kinds: list[str]

    @property
    def keyed(self) -> bool:
        """Whether any job carries an idempotency key (then the claim script sends them)."""
        return bool(self.keyed_ids)

    def script_args(self, ttl_s: int) -> tuple[list[str], list[bytes | str | int]]:
        """KEYS and ARGV of the claim-and-push call that sends this batch."""
        return claim_and_push_args(self.lists, self.envelopes, self.keyed_ids, self.kinds, ttl_s)


def encode(jobs: PreparedJobs, client_id: str | None) -> RedisBatch:
    """Render each job's envelope and name its priority sub-list."""
    lists: list[str] = []
    envelopes: list[bytes] = []
    found: dict[tuple[str, str, int, bool], tuple[EnvelopeTemplate, str]] = {}
    sent_at = time.time()
    for kind, job_id, body, priority, queue, key in jobs.rows():
        shape = (kind, queue, priority, key is not None)
        template, list_key = found.get(shape) or found.setdefault(
            shape,
            _stamped(
                _template(kind, queue, priority, client_id, key is not None), sent_at, jobs.headers
            ),
        )
        lists.append(list_key)
        envelopes.append(template.render(job_id, body, key))
    keyed_ids: list[str | None] = []
    if jobs.keyed:
        keyed_ids = [None if k is None else j for j, k in zip(jobs.job_ids, jobs.keys, strict=True)]
    return RedisBatch(jobs.job_ids, lists, envelopes, keyed_ids, jobs.kinds)


class RedisPublisher:
    """Publishes to a Redis broker (and keeps its idempotency markers there). Thread-safe."""

    SCHEMES: ClassVar[frozenset[str]] = REDIS_SCHEMES

    def __init__(self, config: PublisherConfig) -> None:
        self.broker = redis.Redis.from_url(config.broker_url)
        self.ttl_s = config.claim_ttl_s
        self.before_publish: Callable[[Sequence[str]], None] = config.before_publish
        self._script = self.broker.register_script(CLAIM_AND_PUSH_LUA)

    def publish(self, jobs: PreparedJobs, client_id: str | None) -> list[bool]:
        """See :meth:`taskfleet.publishing.base.Publisher.publish`."""
        batch = encode(jobs, client_id)
        self.before_publish(batch.job_ids)
        if batch.keyed:
            keys, argv = batch.script_args(self.ttl_s)
            return [bool(x) for x in self._script(keys=keys, args=argv)]
        pipe = self.broker.pipeline(transaction=False)
        for list_key, values in push_groups(batch.lists, batch.envelopes):
            pipe.lpush(list_key, *values)
        pipe.execute()
        return [True] * len(jobs)

    def close(self) -> None:
        """Release the broker's connections."""
        self.broker.close()


class AsyncRedisPublisher:
    """Publishes to a Redis broker from a coroutine; one per event loop."""

    SCHEMES: ClassVar[frozenset[str]] = REDIS_SCHEMES

    def __init__(self, config: PublisherConfig) -> None:
        self.broker = redis.asyncio.Redis.from_url(config.broker_url)
        self.ttl_s = config.claim_ttl_s
        self.before_publish = config.before_publish
        self._script = self.broker.register_script(CLAIM_AND_PUSH_LUA)

    async def publish(self, jobs: PreparedJobs, client_id: str | None) -> list[bool]:
        """See :meth:`taskfleet.publishing.base.Publisher.publish`."""
        batch = encode(jobs, client_id)
        self.before_publish(batch.job_ids)
        if batch.keyed:
            keys, argv = batch.script_args(self.ttl_s)
            return [bool(x) for x in await self._script(keys=keys, args=argv)]
        async with self.broker.pipeline(transaction=False) as pipe:
            for list_key, values in push_groups(batch.lists, batch.envelopes):
                pipe.lpush(list_key, *values)
            await pipe.execute()
        return [True] * len(jobs)

    async def close(self) -> None:
        """Release the broker's connections."""
        await self.broker.aclose()
