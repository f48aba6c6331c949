"""Result reuse: a cacheable job is answered from the cache instead of running again.

A job opts in with ``cache=key_fn`` (``job(app, "contract.process", "cpu",
cache=fingerprint_key())``); ``key_fn(args, kwargs)`` returns the cache key, or None to run
the job normally. On a hit the job body does not run and a dict result comes back with
``"cache_hit": true``; a result computed by the job gets ``"cache_hit": false`` (only dict
results are marked; others are returned as stored). Only successful results are stored,
under ``reuse:<job name>:<key>``, so a retried or redelivered job stays idempotent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from taskfleet.cache.tiers import CacheError
from taskfleet.tasks.middleware import NOT_HANDLED, Middleware, task_option

if TYPE_CHECKING:
    from celery import Task

    from taskfleet.cache.tiered import TieredCache  # its tiers (SQLAlchemy) load on first use

log = logging.getLogger(__name__)
CACHE_HIT_FIELD = "cache_hit"
REUSE_PREFIX = "reuse"
KeyFn = Callable[[tuple[Any, ...], dict[str, Any]], str | None]
SANDBOX_KEY_FIELDS = ("source", "stdin", "limits")


def _payload(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Mapping[str, Any]:
    """The job's payload dict: first positional argument, else ``payload=``, else kwargs."""
    if args and isinstance(args[0], Mapping):
        return args[0]
    if isinstance(kwargs.get("payload"), Mapping):
        return kwargs["payload"]  # type: ignore[no-any-return]
    return kwargs


def fingerprint_key(field: str = "fingerprint") -> KeyFn:
    """Key by a fingerprint the payload carries (contract jobs: the document fingerprint)."""

    def key_fn(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        value = _payload(args, kwargs).get(field)
        return value if isinstance(value, str) and value else None

    return key_fn


def content_hash_key(fields: tuple[str, ...] = SANDBOX_KEY_FIELDS) -> KeyFn:
    """Key by sha256 of the canonical JSON of some payload fields (sandbox: source, stdin,
    limits); None when the payload has none of them or they are not JSON."""

    def key_fn(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        payload = _payload(args, kwargs)
        if not any(f in payload for f in fields):
            return None
        try:
            canonical = json.dumps(
                {f: payload.get(f) for f in fields}, sort_keys=True, separators=(",", ":")
            )
        except (TypeError, ValueError):
            return None
        return hashlib.sha256(canonical.encode()).hexdigest()

    return key_fn


class ResultReuseMiddleware(Middleware):
    """Owns the ``cache`` job option; needs a cache (built lazily per process by default)."""

    options: ClassVar[frozenset[str]] = frozenset({"cache"})

    def __init__(self, cache_factory: Callable[[], TieredCache] | None = None) -> None:
        """``cache_factory`` builds this process's cache; default: from the app's URLs."""
        self.cache_factory = cache_factory
        self._cache: TieredCache | None = None
        self._pid = 0

    def cache_for(self, task: Task) -> TieredCache:
        """This process's cache (rebuilt after a fork)."""
        if self._cache is None or self._pid != os.getpid():
            if self.cache_factory is not None:
                self._cache = self.cache_factory()
            else:
                from taskfleet.cache.factory import open_cache

                conf = task.app.conf
                urls = ["memory://", conf.get("taskfleet_redis_url")]
                urls += (
                    [conf.get("taskfleet_database_url")]
                    if conf.get("taskfleet_database_url")
                    else []
                )
                self._cache = open_cache([u for u in urls if u])
            self._pid = os.getpid()
        return self._cache

    @staticmethod
    def cache_key(task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        """The reuse key of this call, or None when the job is not cacheable for it."""
        option = task_option(task, "cache")
        key_fn: KeyFn = getattr(option, "__func__", option)  # stored on the class: unbind
        key = key_fn(args, kwargs)
        return f"{REUSE_PREFIX}:{task.name}:{key}" if key else None

    def before_call(self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Answer from the cache when a result for the same key is stored."""
        key = self.cache_key(task, args, kwargs)
        if key is None:
            return NOT_HANDLED
        try:
            stored = self.cache_for(task).get(key, NOT_HANDLED)
        except CacheError as exc:
            log.warning("result reuse: lookup failed (%s); running the job", exc)
            return NOT_HANDLED
        if isinstance(stored, dict):
            return {**stored, CACHE_HIT_FIELD: True}
        return stored

    def after_call(
        self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any
    ) -> None:
        """Store a computed result for the next identical call, and mark it as computed."""
        key = self.cache_key(task, args, kwargs)
        if key is None:
            return
        stored = (
            {k: v for k, v in result.items() if k != CACHE_HIT_FIELD}
            if isinstance(result, dict)
            else result
        )
        try:
            self.cache_for(task).set(key, stored)
        except CacheError as exc:  # the job's own result stands; the next call just reruns
            log.warning("result reuse: not stored (%s)", exc)
        if isinstance(result, dict):
            result[CACHE_HIT_FIELD] = False
