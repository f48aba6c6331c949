"""Settings of the result cache tiers, read from ``TASKFLEET_CACHE_*`` environment variables."""

from __future__ import annotations

from typing import Final, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from taskfleet.config.settings import load_validated

CACHE_ENV_PREFIX = "TASKFLEET_CACHE_"
DEFAULT_L1_POLICY: Final = "lru"
DEFAULT_L1_MAX_ENTRIES = 10_000
DEFAULT_L1_TTL_S = 60.0
DEFAULT_L2_TTL_S = 3600
DEFAULT_L3_TTL_S = 7 * 24 * 3600
DEFAULT_MAX_VALUE_BYTES = 512 * 1024
DEFAULT_NAMESPACE = "taskfleet:cache"
DEFAULT_FLUSH_BATCH = 500
DEFAULT_FLUSH_INTERVAL_MS = 100
DEFAULT_PURGE_INTERVAL_S = 300.0
#: Results and cache writes larger than this are quarantined, not sent to Postgres (jsonb
#: itself stops near 256 MiB; a row this large would stall every batch behind it).
DEFAULT_PERSIST_MAX_BYTES = 16 * 1024 * 1024
#: Cap of the persistence stream: a normal backlog is under a few thousand entries; this
#: holds about 15 minutes of results at 1,000 jobs/s while Postgres is down.
DEFAULT_PERSIST_STREAM_MAXLEN = 1_000_000
DEFAULT_PERSIST_MAX_RETRY_DELAY_S = 30.0

L1Policy = Literal["lru", "lfu", "fifo", "ttl"]


def cache_env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    return f"{CACHE_ENV_PREFIX}{field.upper()}"


class CacheSettings(BaseSettings):
    """Sizes, TTLs and limits of the cache tiers (L1 memory, L2 Redis, L3 Postgres)."""

    model_config = SettingsConfigDict(
        env_prefix=CACHE_ENV_PREFIX, extra="ignore", validate_default=True
    )

    l1_policy: L1Policy = Field(DEFAULT_L1_POLICY, description="L1 eviction: lru|lfu|fifo|ttl")
    l1_max_entries: int = Field(DEFAULT_L1_MAX_ENTRIES, ge=1, le=100_000_000)
    l1_max_bytes: int | None = Field(
        None, ge=1024, description="Bound L1 by encoded bytes instead of entries"
    )
    l1_ttl: float = Field(DEFAULT_L1_TTL_S, gt=0, description="Seconds an L1 entry lives")
    l2_ttl: int = Field(DEFAULT_L2_TTL_S, ge=1, description="Seconds a Redis entry lives")
    l3_ttl: int = Field(DEFAULT_L3_TTL_S, ge=1, description="Seconds a Postgres row lives")
    max_value_bytes: int = Field(DEFAULT_MAX_VALUE_BYTES, ge=64, le=512 * 1024 * 1024)
    namespace: str = Field(DEFAULT_NAMESPACE, min_length=1)
    flush_batch: int = Field(DEFAULT_FLUSH_BATCH, ge=1, le=100_000)
    flush_interval_ms: int = Field(DEFAULT_FLUSH_INTERVAL_MS, ge=1, le=60_000)
    purge_interval: float = Field(DEFAULT_PURGE_INTERVAL_S, gt=0)
    persist_max_bytes: int = Field(
        DEFAULT_PERSIST_MAX_BYTES,
        ge=1024,
        le=256 * 1024 * 1024,
        description="Largest result (JSON bytes) the persister writes to Postgres; larger "
        "ones are quarantined",
    )
    persist_stream_maxlen: int = Field(
        DEFAULT_PERSIST_STREAM_MAXLEN,
        ge=10,
        description="Entries the persistence stream may hold; beyond, the oldest go to the "
        "quarantine (nothing is dropped)",
    )
    persist_max_retry_delay: float = Field(
        DEFAULT_PERSIST_MAX_RETRY_DELAY_S,
        gt=0,
        le=3600,
        description="Longest wait between the persister's retries while Postgres is down",
    )

    @model_validator(mode="after")
    def _coherent(self) -> CacheSettings:
        if self.l1_max_bytes is not None and self.l1_max_bytes < self.max_value_bytes:
            raise ValueError(
                f"{cache_env_name('l1_max_bytes')} ({self.l1_max_bytes}) must be at least "
                f"{cache_env_name('max_value_bytes')} ({self.max_value_bytes})"
            )
        if any(ch.isspace() or ch in "*?[]\\" for ch in self.namespace):
            raise ValueError(
                f"{cache_env_name('namespace')} must have no spaces or glob characters"
            )
        return self


def load_cache_settings(**overrides: object) -> CacheSettings:
    """Read cache settings, turning validation errors into one ConfigError naming variables.

    Raises:
        ConfigError: a setting is invalid; the message names its environment variable.
    """
    return load_validated(CacheSettings, "taskfleet cache settings", **overrides)
