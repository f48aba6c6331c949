"""Stale answers under overload: a kind that opts in is answered from its cached result
instead of being shed.

A kind opts in with ``TASKFLEET_LIMITS_OVERLOAD_STALE`` (a list of kinds), if its reuse key
is known here (:data:`REUSE_KEYS`: the function its job's ``cache=`` option uses, named as
data so a producer imports no job module). When ``enqueue`` of such a job meets
:class:`~taskfleet.ratelimit.errors.Overloaded` and the result cache
(:mod:`taskfleet.cache.reuse`, its Redis tier) holds a result for the same key, that result
is stored as the result of a new job id, marked ``"stale": true`` (dict results), and
``enqueue`` returns its handle; nothing is published. Without a cached result the
``Overloaded`` stands. Answers are counted as ``stale`` in the queue's counters.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery
from kombu.utils.imports import symbol_by_name

from taskfleet.config.limits import LimitSettings
from taskfleet.handles import JobHandle
from taskfleet.ratelimit.admission import SHED_PREFIX

#: Kinds that may opt in, and their reuse key function ("module:function").
REUSE_KEYS: dict[str, str] = {"contract.process": "taskfleet.contracts.pipeline:reuse_key"}
#: The field a stale dict result carries.
STALE_FIELD = "stale"
KeyFn = Callable[[tuple[Any, ...], dict[str, Any]], str | None]


class StaleAnswers:
    """Answers opted-in kinds from the result cache while their queue is overloaded."""

    def __init__(self, app: Celery, kinds: frozenset[str], redis_url: str) -> None:
        unknown = sorted(kinds - REUSE_KEYS.keys())
        if unknown:
            raise ValueError(f"no reuse key known for {unknown}; known: {sorted(REUSE_KEYS)}")
        self.app = app
        self.kinds = kinds
        self.redis_url = redis_url
        self.redis = redis.Redis.from_url(redis_url)
        self._cache: Any = None

    def _lookup(self, key: str) -> Any:
        if self._cache is None:  # the Redis tier only: no Postgres round trip under overload
            from taskfleet.cache.factory import open_cache

            self._cache = open_cache([self.redis_url], listen=False, redis_client=self.redis)
        return self._cache.get(key)

    def answer(self, kind: str, payload: Any, queue: str) -> JobHandle | None:
        """A handle on a stale result for ``kind`` with ``payload``, or None."""
        if kind not in self.kinds:
            return None
        from taskfleet.cache.reuse import CACHE_HIT_FIELD, REUSE_PREFIX

        key_fn: KeyFn = symbol_by_name(REUSE_KEYS[kind])
        key = key_fn((payload,), {})
        stored = self._lookup(f"{REUSE_PREFIX}:{kind}:{key}") if key else None
        if stored is None:
            return None
        if isinstance(stored, dict):
            stored = {**stored, CACHE_HIT_FIELD: True, STALE_FIELD: True}
        job_id = str(uuid.uuid4())
        self.app.backend.store_result(job_id, stored, "SUCCESS")
        self.redis.hincrby(SHED_PREFIX + queue, STALE_FIELD, 1)
        return JobHandle(job_id, kind, self.app)


def stale_answers(app: Celery, settings: LimitSettings, redis_url: str) -> StaleAnswers | None:
    """The stale answers ``settings`` opt into, if any (admission control on)."""
    if not settings.overload_stale or not settings.overload_bounded:
        return None
    return StaleAnswers(app, frozenset(settings.overload_stale), redis_url)
