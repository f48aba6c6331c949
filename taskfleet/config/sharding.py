"""Settings of sharded durable results, read from ``TASKFLEET_*`` environment variables.

``TASKFLEET_DATABASE_URLS`` lists the physical shards, comma-separated, each a primary URL
optionally followed by ``|`` and its replica's URL::

    TASKFLEET_DATABASE_URLS="postgresql://a/db|postgresql://a2/db,postgresql://b/db"

Unset (the default), results go to the one ``TASKFLEET_DATABASE_URL`` as before. The
shards are named ``shard0``, ``shard1``... in this order; the first is the catalog, where
the shard map is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from taskfleet.config.settings import DATABASE_SCHEMES, load_validated

SHARDING_ENV_PREFIX = "TASKFLEET_"
DATABASE_URLS_ENV: Final = "TASKFLEET_DATABASE_URLS"
SHARD_SEPARATOR: Final = ","
REPLICA_SEPARATOR: Final = "|"
SHARD_NAME_PREFIX: Final = "shard"
DEFAULT_STRATEGY: Final = "consistent"
#: A replica serves reads while its replay lag is under this many seconds.
DEFAULT_REPLICA_MAX_LAG_S = 5.0
#: Scatter-gather queries give up on a shard after this many seconds (the answer is partial).
DEFAULT_QUERY_DEADLINE_S = 5.0
#: Consecutive write failures that take a shard out of writes, and how long it stays out
#: before one batch is tried again.
DEFAULT_SHARD_FAIL_MAX = 2
DEFAULT_SHARD_RETRY_S = 5.0

Strategy = Literal["consistent", "hash-mod", "range", "directory"]


@dataclass(frozen=True)
class ShardEndpoints:
    """One physical shard: its name, primary URL and replica URLs."""

    name: str
    primary: str
    replicas: tuple[str, ...] = ()


def _is_database_url(url: str) -> bool:
    return url.partition("://")[0].lower() in DATABASE_SCHEMES


def parse_database_urls(value: str) -> list[ShardEndpoints]:
    """Split ``TASKFLEET_DATABASE_URLS`` into shards (see the module docstring).

    Raises:
        ValueError: an empty entry or a URL that is not ``postgresql://``.
    """
    shards: list[ShardEndpoints] = []
    for index, entry in enumerate(value.split(SHARD_SEPARATOR)):
        urls = [u.strip() for u in entry.split(REPLICA_SEPARATOR)]
        if not all(urls) or not all(_is_database_url(u) for u in urls):
            raise ValueError(f"shard {index}: expected postgresql:// URLs, got {entry!r}")
        shards.append(ShardEndpoints(f"{SHARD_NAME_PREFIX}{index}", urls[0], tuple(urls[1:])))
    return shards


class ShardingSettings(BaseSettings):
    """Where the shards are and how results are placed on them."""

    model_config = SettingsConfigDict(
        env_prefix=SHARDING_ENV_PREFIX, extra="ignore", validate_default=True
    )

    database_urls: str | None = Field(
        None, description="Physical shards: primary[|replica],... (unset: one database)"
    )
    shard_strategy: Strategy = Field(
        DEFAULT_STRATEGY,
        description="Placement of logical shards: consistent|hash-mod|range|directory",
    )
    replica_max_lag: float = Field(DEFAULT_REPLICA_MAX_LAG_S, gt=0)
    shard_query_deadline: float = Field(DEFAULT_QUERY_DEADLINE_S, gt=0)
    shard_fail_max: int = Field(DEFAULT_SHARD_FAIL_MAX, ge=1)
    shard_retry: float = Field(DEFAULT_SHARD_RETRY_S, gt=0)

    @field_validator("database_urls")
    @classmethod
    def _valid_urls(cls, value: str | None) -> str | None:
        if value is not None:
            parse_database_urls(value)
        return value or None

    @property
    def shards(self) -> list[ShardEndpoints]:
        """The physical shards, or none (unsharded)."""
        return parse_database_urls(self.database_urls) if self.database_urls else []


def load_sharding_settings(**overrides: object) -> ShardingSettings:
    """Read sharding settings; invalid ones raise ConfigError naming the variable."""
    return load_validated(ShardingSettings, "taskfleet sharding settings", **overrides)
