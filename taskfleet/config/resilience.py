"""Settings of the resilience layer (retries, circuit breakers, dead letters).

Read from ``TASKFLEET_RESILIENCE_*`` variables, validated once, with errors naming the variable.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from taskfleet.config.settings import load_validated

ENV_PREFIX = "TASKFLEET_RESILIENCE_"
#: A job whose worker process died this many times is dead-lettered on its next delivery.
DEFAULT_MAX_DELIVERIES = 3
#: Retry waits up to this long sleep in the worker; longer ones re-queue with a countdown.
DEFAULT_INPROCESS_WAIT_S = 1.0
#: What a breaker does when its storage (Redis) is unreachable.
DEFAULT_STORAGE_FALLBACK: Literal["closed", "open"] = "closed"
#: Seconds a process admits calls through a closed breaker without asking Redis (0: ask
#: for every call). Ended early by a failure, or by the fleet-wide event when the breaker
#: starts failing or opens; see ``taskfleet.resilience.breaker`` for what it costs.
DEFAULT_BREAKER_LEASE_S = 0.2
MAX_BREAKER_LEASE_S = 5.0
#: How long per-job bookkeeping (attempts, delivery counts) outlives the job.
DEFAULT_BOOKKEEPING_TTL_S = 7 * 24 * 3600
#: Whether workers on Redis tie deliveries to themselves and run heartbeat sidecars, so a
#: dead worker's jobs are restored in seconds (false: after the visibility timeout only).
#: Only taskfleet's transport ties them: with ``TASKFLEET_FAST_TRANSPORT=false`` it is off.
DEFAULT_FAST_RECLAIM = True
#: A worker's heartbeat sidecar refreshes its consumer's alive key this often (seconds)...
DEFAULT_HEARTBEAT_INTERVAL_S = 2.0
#: ...with this TTL: a consumer silent this long is dead and its deliveries are restored.
DEFAULT_HEARTBEAT_TTL_S = 8.0
#: How often (jittered) each worker's sidecar looks for dead consumers to restore.
DEFAULT_RECLAIM_INTERVAL_S = 1.5
#: ``taskfleet up``: the first restart delay of a dead child (doubled per recent crash).
DEFAULT_RESTART_BACKOFF_S = 0.5
#: ``taskfleet up`` restarts a worker whose process lives but which answered no ping for
#: this long (its main loop is stopped, deadlocked, or blocked by a job that never yields).
DEFAULT_WORKER_SILENCE_S = 60.0
#: The TTL must cover this many missed heartbeats (a loaded host delays a few).
MIN_HEARTBEATS_PER_TTL = 2
BREAKER_SCHEMES = frozenset({"memory", "redis", "rediss"})


def _env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


class ResilienceSettings(BaseSettings):
    """Knobs of retries, breakers and dead-lettering."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", validate_default=True
    )

    breaker_storage_url: str | None = Field(
        None, description="memory:// or redis://… (default: taskfleet's Redis)"
    )
    breaker_storage_fallback: Literal["closed", "open"] = DEFAULT_STORAGE_FALLBACK
    breaker_lease: float = Field(DEFAULT_BREAKER_LEASE_S, ge=0, le=MAX_BREAKER_LEASE_S)
    max_deliveries: int = Field(DEFAULT_MAX_DELIVERIES, ge=1, le=1000)
    inprocess_wait: float = Field(DEFAULT_INPROCESS_WAIT_S, ge=0, le=60)
    bookkeeping_ttl: int = Field(DEFAULT_BOOKKEEPING_TTL_S, ge=60)
    fast_reclaim: bool = DEFAULT_FAST_RECLAIM
    heartbeat_interval: float = Field(DEFAULT_HEARTBEAT_INTERVAL_S, gt=0, le=60)
    heartbeat_ttl: float = Field(DEFAULT_HEARTBEAT_TTL_S, gt=0, le=600)
    reclaim_interval: float = Field(DEFAULT_RECLAIM_INTERVAL_S, gt=0, le=600)
    restart_backoff: float = Field(
        DEFAULT_RESTART_BACKOFF_S,
        gt=0,
        le=60,
        description="taskfleet up: seconds before restarting a dead child, doubled per "
        "recent crash of it",
    )

    worker_silence: float = Field(
        DEFAULT_WORKER_SILENCE_S,
        ge=0,
        description="taskfleet up: seconds a running worker may answer no ping before it is "
        "restarted (0: never; a solo worker gets at least its hard time limit + 30 s)",
    )

    @field_validator("breaker_storage_url")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme.lower() not in BREAKER_SCHEMES:
            raise ValueError(
                f"{_env_name('breaker_storage_url')} must be memory://, redis:// or rediss://"
            )
        return value

    @field_validator("heartbeat_ttl")
    @classmethod
    def _ttl_covers_heartbeats(cls, value: float, info: ValidationInfo) -> float:
        interval = info.data.get("heartbeat_interval")
        if interval is not None and value < MIN_HEARTBEATS_PER_TTL * interval:
            raise ValueError(
                f"must be at least {MIN_HEARTBEATS_PER_TTL} x "
                f"{_env_name('heartbeat_interval')} (a live worker would look dead)"
            )
        return value


def load_resilience_settings(**overrides: object) -> ResilienceSettings:
    """Read and validate the settings, as one ConfigError naming each bad variable."""
    return load_validated(ResilienceSettings, "resilience settings", **overrides)


@lru_cache(maxsize=1)
def get_resilience_settings() -> ResilienceSettings:
    """The process-wide resilience settings, read once."""
    return load_resilience_settings()
