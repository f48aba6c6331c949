"""Build a cache from storage URLs: the scheme picks the tier (``memory://``, ``redis://``,
``postgresql://``), listed top first; query parameters of ``memory://`` override L1 settings.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import redis

from taskfleet.cache.l1 import MemoryTier
from taskfleet.cache.l2 import RedisTier
from taskfleet.cache.l3 import PostgresTier
from taskfleet.cache.tiered import TieredCache
from taskfleet.config.cache import CacheSettings, load_cache_settings
from taskfleet.results.store import make_engine
from taskfleet.results.stream import PERSIST_STREAM

MEMORY_SCHEMES = frozenset({"memory", "mem"})
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})
POSTGRES_SCHEMES = frozenset({"postgresql", "postgres", "postgresql+psycopg"})
#: Each tier kind and the URL schemes that name it, top tier first.
SCHEME_KINDS = (
    ("memory", MEMORY_SCHEMES),
    ("redis", REDIS_SCHEMES),
    ("postgres", POSTGRES_SCHEMES),
)
#: ``memory://`` query parameters and the settings they override.
MEMORY_PARAMS = {"policy": "l1_policy", "max_entries": "l1_max_entries",
                 "max_bytes": "l1_max_bytes", "ttl": "l1_ttl"}  # fmt: skip
DEFAULT_DB_POOL = 2


def open_cache(
    urls: Sequence[str],
    settings: CacheSettings | None = None,
    *,
    stream: str = PERSIST_STREAM,
    listen: bool = True,
    redis_client: redis.Redis | None = None,
    engine: Any = None,
) -> TieredCache:
    """A cache over the tiers the URLs name (at most one of each kind, top first).

    With Redis and Postgres both present, L3 is written behind through ``stream`` (drained by
    ``taskfleet.results.persister``); Postgres alone is written directly.

    Raises:
        ValueError: an unknown scheme, or a tier kind named twice.
        ConfigError: a memory:// parameter is invalid (named as its environment variable).
    """
    settings = settings or load_cache_settings()
    kinds: dict[str, str] = {}
    for url in urls:
        scheme = urlsplit(url).scheme.lower()
        kind = next((k for k, s in SCHEME_KINDS if scheme in s), None)
        if kind is None:
            raise ValueError(f"unknown cache URL scheme {scheme!r} in {url!r}")
        if kind in kinds:
            raise ValueError(f"cache URLs name two {kind} tiers")
        kinds[kind] = url
    if "memory" in kinds:
        params = dict(parse_qsl(urlsplit(kinds["memory"]).query))
        unknown = sorted(set(params) - set(MEMORY_PARAMS))
        if unknown:
            raise ValueError(f"unknown memory:// parameters {unknown}")
        overrides = {MEMORY_PARAMS[k]: v for k, v in params.items()}
        if overrides:
            settings = load_cache_settings(**(settings.model_dump() | overrides))
    origin = f"{os.getpid()}:{uuid.uuid4().hex[:8]}"
    l1 = (
        MemoryTier(
            policy=settings.l1_policy,
            max_entries=settings.l1_max_entries,
            max_bytes=settings.l1_max_bytes,
            ttl=settings.l1_ttl,
        )
        if "memory" in kinds
        else None
    )
    l3 = None
    if "postgres" in kinds:
        l3 = PostgresTier(engine or make_engine(kinds["postgres"], DEFAULT_DB_POOL),
                          ttl=settings.l3_ttl)  # fmt: skip
    l2 = None
    if "redis" in kinds:
        l2 = RedisTier(
            redis_client or redis.Redis.from_url(kinds["redis"]),
            namespace=settings.namespace,
            ttl=settings.l2_ttl,
            stream=stream if l3 is not None else None,
            l3_ttl=settings.l3_ttl if l3 is not None else None,
            origin=origin,
        )
    return TieredCache(settings, l1=l1, l2=l2, l3=l3, listen=listen)
