"""Settings of rate limits and admission control.

Read from ``TASKFLEET_LIMITS_*`` variables, validated once, with errors naming the variable.
The client tables map a client id (the ``taskfleet_client_id`` header) to a limit spec
(``"100/s"``, ``"100/s burst=20"``, ``"leaky 10/s capacity=50"``, ``"window 1000/min"``);
the entry ``"*"`` applies to every client not listed, and a job with no client id is not
limited per client.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from taskfleet.config.settings import load_validated

ENV_PREFIX = "TASKFLEET_LIMITS_"
LIMIT_SCHEMES = frozenset({"memory", "redis", "rediss"})
#: While the storage is unreachable: "allow" every call, "deny" every call, or keep each
#: limit in the process ("local": N processes admit up to N times the rate).
DEFAULT_FALLBACK: Literal["allow", "deny", "local"] = "local"
#: ``retry_after`` of a call denied because the storage is unreachable (fallback "deny").
DEFAULT_DENY_RETRY_AFTER_S = 1.0
#: How far ahead a job over its execution limit may book a slot; beyond, it is deferred by
#: this much and asks again. Far below the broker's visibility timeout.
DEFAULT_MAX_DEFER_S = 60.0
#: How long allowed/refused/deferred counters of a client or kind outlive its last call.
DEFAULT_COUNTER_TTL_S = 7 * 24 * 3600
#: Admission control: a queue is overloaded past this backlog (None: no bound)...
DEFAULT_OVERLOAD_BACKLOG: int | None = None
#: ...or when its oldest job has waited this long (seconds; None: no bound).
DEFAULT_OVERLOAD_AGE_S: float | None = None
#: Jobs at or above this priority are admitted even while overloaded (9: critical only).
DEFAULT_OVERLOAD_ADMIT_PRIORITY = 9
#: A producer reads the queues' depth at most this often (milliseconds).
DEFAULT_OVERLOAD_REFRESH_MS = 250
#: ``retry_after`` of an ``Overloaded`` refusal.
DEFAULT_OVERLOAD_RETRY_AFTER_S = 1.0


def _env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


class LimitSettings(BaseSettings):
    """Knobs of the fleet-wide rate limits and of admission control."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", validate_default=True
    )

    storage_url: str | None = Field(
        None, description="memory:// or redis://… (default: taskfleet's Redis)"
    )
    fallback: Literal["allow", "deny", "local"] = DEFAULT_FALLBACK
    deny_retry_after: float = Field(DEFAULT_DENY_RETRY_AFTER_S, gt=0, le=3600)
    enqueue: dict[str, str] = Field(
        default_factory=dict, description="client id -> limit at enqueue ('*': any other)"
    )
    execution: dict[str, str] = Field(
        default_factory=dict, description="client id -> limit at execution ('*': any other)"
    )
    max_defer: float = Field(DEFAULT_MAX_DEFER_S, gt=0, le=3600)
    counter_ttl: int = Field(DEFAULT_COUNTER_TTL_S, ge=60)
    overload_backlog: int | None = Field(DEFAULT_OVERLOAD_BACKLOG, ge=1)
    overload_age: float | None = Field(DEFAULT_OVERLOAD_AGE_S, gt=0)
    overload_admit_priority: int = Field(DEFAULT_OVERLOAD_ADMIT_PRIORITY, ge=0, le=9)
    overload_refresh_ms: int = Field(DEFAULT_OVERLOAD_REFRESH_MS, ge=1, le=60_000)
    overload_retry_after: float = Field(DEFAULT_OVERLOAD_RETRY_AFTER_S, gt=0, le=3600)
    overload_stale: list[str] = Field(
        default_factory=list,
        description="kinds answered from their cached result (marked stale) while overloaded",
    )

    @field_validator("storage_url")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme.lower() not in LIMIT_SCHEMES:
            raise ValueError(f"{_env_name('storage_url')} must be memory://, redis:// or rediss://")
        return value

    @field_validator("enqueue", "execution")
    @classmethod
    def _valid_specs(cls, table: dict[str, str]) -> dict[str, str]:
        from taskfleet.ratelimit.policies import policy_from_spec

        for spec in table.values():
            policy_from_spec(spec)  # raises ValueError naming the spec
        return table

    @property
    def overload_bounded(self) -> bool:
        """Whether admission control is on (a backlog or an age bound is set)."""
        return self.overload_backlog is not None or self.overload_age is not None


def load_limit_settings(**overrides: object) -> LimitSettings:
    """Read and validate the settings, as one ConfigError naming each bad variable."""
    return load_validated(LimitSettings, "limit settings", **overrides)


@lru_cache(maxsize=1)
def get_limit_settings() -> LimitSettings:
    """The process-wide limit settings, read once."""
    return load_limit_settings()
