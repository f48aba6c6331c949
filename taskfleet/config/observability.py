"""Where the metrics endpoint listens, its credentials, and the bounds ``/readyz`` checks.

Read from ``TASKFLEET_METRICS_*``, ``TASKFLEET_READY_*``, ``TASKFLEET_CAPACITY_*`` and
``TASKFLEET_TRACING``. The endpoint binds to loopback
by default; its basic-auth credentials come from ``TASKFLEET_METRICS_BASIC_AUTH``
(``user:password``), from the environment only, never from a command line.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from taskfleet.config.settings import ENV_PREFIX, load_validated

DEFAULT_METRICS_HOST = "127.0.0.1"
#: Next to Flower's 5555 and outside the Prometheus exporters' registered range.
DEFAULT_METRICS_PORT = 9808
#: Gauges computed from Redis at scrape time are reused this long (several scrapers, one read).
DEFAULT_SCRAPE_CACHE_S = 2.0
#: ``/readyz`` fails when a queue's oldest waiting job is older than this.
DEFAULT_READY_MAX_JOB_AGE_S = 600.0
#: ``/readyz`` fails when the persistence stream's oldest entry is older than this.
DEFAULT_READY_MAX_PERSIST_LAG_S = 120.0
#: The mean queue wait capacity planning sizes pools for.
DEFAULT_CAPACITY_TARGET_WAIT_S = 1.0
#: Capacity planning averages the autoscaler's measurements over this window.
DEFAULT_CAPACITY_WINDOW_S = 60.0
#: How long each readiness probe (ping, query, worker inspect) may take.
DEFAULT_PROBE_TIMEOUT_S = 1.0


class ObservabilitySettings(BaseSettings):
    """The metrics endpoint and the readiness bounds."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", validate_default=True
    )

    metrics_host: str = Field(DEFAULT_METRICS_HOST, description="Address /metrics binds to")
    metrics_port: int = Field(DEFAULT_METRICS_PORT, ge=0, le=65535)
    metrics_basic_auth: SecretStr | None = Field(
        None, description="user:password the endpoint asks for (environment only)"
    )
    metrics_cache_s: float = Field(DEFAULT_SCRAPE_CACHE_S, ge=0, le=60)
    ready_max_job_age_s: float = Field(DEFAULT_READY_MAX_JOB_AGE_S, gt=0)
    ready_max_persist_lag_s: float = Field(DEFAULT_READY_MAX_PERSIST_LAG_S, gt=0)
    ready_probe_timeout_s: float = Field(DEFAULT_PROBE_TIMEOUT_S, gt=0, le=30)
    capacity_target_wait_s: float = Field(DEFAULT_CAPACITY_TARGET_WAIT_S, ge=0)
    capacity_window_s: float = Field(DEFAULT_CAPACITY_WINDOW_S, gt=0)
    tracing: bool = Field(
        False, description="Trace jobs with OpenTelemetry (needs the taskfleet[tracing] extra)"
    )

    @field_validator("metrics_basic_auth", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("metrics_basic_auth")
    @classmethod
    def _user_and_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            user, sep, password = value.get_secret_value().partition(":")
            if not (user and sep and password):
                raise ValueError("must be user:password, both non-empty")
        return value


def load_observability_settings(**overrides: object) -> ObservabilitySettings:
    """Read and validate the settings, as one ConfigError naming each bad variable."""
    return load_validated(ObservabilitySettings, "observability settings", **overrides)


@lru_cache(maxsize=1)
def get_observability_settings() -> ObservabilitySettings:
    """The process-wide observability settings, read once."""
    return load_observability_settings()
