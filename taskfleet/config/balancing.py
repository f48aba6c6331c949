"""Settings of outbound load balancing: the backend sets, health checks, outlier ejection.

The backends come from ``TASKFLEET_BACKENDS`` (JSON): either a list of backends (the set
named ``default``) or an object of named sets, each a list of backends::

    TASKFLEET_BACKENDS='{"pricing": [{"name": "eu-1", "url": "http://10.0.0.5:8080",
                                      "weight": 3, "region": "eu"}]}'

The knobs come from ``TASKFLEET_BALANCING_*`` variables, validated once, with errors naming
the variable.
"""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from taskfleet.config.settings import ConfigError

ENV_PREFIX = "TASKFLEET_BALANCING_"
WHAT = "taskfleet balancing settings"
BACKENDS_ENV = "TASKFLEET_BACKENDS"
DEFAULT_SET = "default"
DEFAULT_WEIGHT = 1
MAX_WEIGHT = 1000
DEFAULT_REGION = ""
#: Active health checks: each process probes every backend's health path this often...
DEFAULT_HEALTH_PATH = "/health"
DEFAULT_HEALTH_INTERVAL_S = 5.0
#: ...waiting this long for an answer (a slower answer is a failed probe)...
DEFAULT_HEALTH_TIMEOUT_S = 1.0
#: ...and marks it down fleet-wide after this many failed probes in a row, up again after
#: this many passed ones in a row.
DEFAULT_UNHEALTHY_THRESHOLD = 2
DEFAULT_HEALTHY_THRESHOLD = 2
#: A fleet-wide down mark lives this long unless a failed probe renews it, so a backend no
#: live process probes any more is tried again by itself.
DEFAULT_DOWN_TTL_S = 30.0
#: Passive outlier ejection (as Envoy): this many failures in a row (connection errors,
#: timeouts, 5xx) eject a backend for the base time x the ejections in a row, capped.
DEFAULT_CONSECUTIVE_FAILURES = 5
DEFAULT_EJECTION_BASE_S = 30.0
DEFAULT_EJECTION_MAX_S = 300.0
#: Ejections within this long of each other count as "in a row" (the multiplier above).
DEFAULT_EJECTION_MEMORY_S = 600.0
#: A process re-reads the fleet-wide health marks at most this often (one Redis MGET).
DEFAULT_HEALTH_CACHE_S = 0.25
#: While Redis is unreachable, health is kept per process; Redis is tried again this often.
DEFAULT_REDIS_RETRY_S = 5.0
#: Latency EWMA: weight of a new sample, and the time constant over which the estimate of a
#: backend that gets no traffic decays towards zero (so a once-slow backend is tried again).
DEFAULT_EWMA_ALPHA = 0.3
DEFAULT_LATENCY_DECAY_S = 10.0
#: Redis keys: ``<namespace>:<set>:...``.
DEFAULT_NAMESPACE = "taskfleet:backends"


class BackendSpec(BaseModel):
    """One backend of a set: where it is, its share of traffic, its region."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.@-]+$")
    url: str = Field(description="Base URL, e.g. http://10.0.0.5:8080 (paths are joined)")
    weight: int = Field(DEFAULT_WEIGHT, ge=1, le=MAX_WEIGHT)
    region: str = DEFAULT_REGION

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("a backend URL must start with http:// or https://")
        return value.rstrip("/")


class BalancingSettings(BaseSettings):
    """Backend sets and the knobs of health checks, ejection and latency tracking."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", validate_default=True
    )

    backends: dict[str, tuple[BackendSpec, ...]] = Field(
        default_factory=dict,
        validation_alias=AliasChoices(BACKENDS_ENV, "backends"),
        description="JSON: a list of backends (set 'default') or an object of named sets",
    )
    health_path: str = Field(DEFAULT_HEALTH_PATH, pattern=r"^/")
    health_interval: float = Field(DEFAULT_HEALTH_INTERVAL_S, gt=0)
    health_timeout: float = Field(DEFAULT_HEALTH_TIMEOUT_S, gt=0)
    unhealthy_threshold: int = Field(DEFAULT_UNHEALTHY_THRESHOLD, ge=1)
    healthy_threshold: int = Field(DEFAULT_HEALTHY_THRESHOLD, ge=1)
    down_ttl: float = Field(DEFAULT_DOWN_TTL_S, gt=0)
    consecutive_failures: int = Field(DEFAULT_CONSECUTIVE_FAILURES, ge=1)
    ejection_base: float = Field(DEFAULT_EJECTION_BASE_S, gt=0)
    ejection_max: float = Field(DEFAULT_EJECTION_MAX_S, gt=0)
    ejection_memory: float = Field(DEFAULT_EJECTION_MEMORY_S, gt=0)
    health_cache: float = Field(DEFAULT_HEALTH_CACHE_S, ge=0)
    redis_retry: float = Field(DEFAULT_REDIS_RETRY_S, gt=0)
    ewma_alpha: float = Field(DEFAULT_EWMA_ALPHA, gt=0, le=1)
    latency_decay: float = Field(DEFAULT_LATENCY_DECAY_S, gt=0)
    namespace: str = Field(DEFAULT_NAMESPACE, min_length=1, pattern=r"^[^\s*?\[\]]+$")

    @field_validator("backends", mode="before")
    @classmethod
    def _sets(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            value = {DEFAULT_SET: value}
        if isinstance(value, dict):
            for name, members in value.items():
                names = [m.get("name") if isinstance(m, dict) else m.name for m in members]
                if not members or len(set(names)) != len(names):
                    raise ValueError(f"set {name!r} must list backends with distinct names")
        return value

    def backend_set(self, name: str = DEFAULT_SET) -> tuple[BackendSpec, ...]:
        """The backends of set ``name``.

        Raises:
            KeyError: no such set; the message lists the declared ones.
        """
        if name not in self.backends:
            declared = ", ".join(sorted(self.backends)) or f"none ({BACKENDS_ENV} is unset)"
            raise KeyError(f"no backend set {name!r}; declared: {declared}")
        return self.backends[name]


def load_balancing_settings(**overrides: object) -> BalancingSettings:
    """Read balancing settings, turning validation errors into one ConfigError.

    Raises:
        ConfigError: a setting is invalid; the message names its environment variable
            (and, for a backend, where in ``TASKFLEET_BACKENDS``).
    """
    try:
        return BalancingSettings(**overrides)  # type: ignore[arg-type]
    except SettingsError as exc:
        raise ConfigError(f"invalid {WHAT}: {BACKENDS_ENV} is not valid JSON ({exc})") from None
    except ValidationError as exc:
        problems = "; ".join(f"{_where(err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"invalid {WHAT}: {problems}") from None


def _where(loc: tuple[int | str, ...]) -> str:
    if not loc:
        return ENV_PREFIX.rstrip("_")
    head, rest = str(loc[0]), "".join(f"[{part!r}]" for part in loc[1:])
    if head in (BACKENDS_ENV, "backends"):
        return BACKENDS_ENV + rest
    return f"{ENV_PREFIX}{head.upper()}{rest}"
