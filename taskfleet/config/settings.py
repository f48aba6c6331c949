"""Validated settings, read from ``TASKFLEET_*`` environment variables and ``.env``.

Every knob taskfleet has lives here, so an invalid combination fails once, at start,
with a message naming the setting, instead of surfacing later as a duplicated or lost job.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "TASKFLEET_"
DEFAULT_DATA_DIR = ".taskfleet"
DEFAULT_CPU_QUEUE = "cpu"
DEFAULT_IO_QUEUE = "io"
DEFAULT_DLQ_SUFFIX = ".dlq"
DEFAULT_SOFT_TIME_LIMIT_S = 300.0
DEFAULT_HARD_TIME_LIMIT_S = 330.0
DEFAULT_VISIBILITY_TIMEOUT_S = 3600.0
DEFAULT_IO_CONCURRENCY = 50
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
#: A result's Redis TTL: Redis caches recent results (README, "Redis memory"), Postgres keeps
#: them for the retention (``expires_at``; never less than the TTL, see results/backend.py).
DEFAULT_RESULT_EXPIRES_S = 3600
DEFAULT_RESULT_RETENTION_S = 7 * 24 * 3600
DEFAULT_DB_POOL_SIZE = 5
DEFAULT_REDIS_POOL_SIZE = 20
#: Reserved jobs per worker beyond one per process (see taskfleet.workers.prefetch).
DEFAULT_SPARE_PREFETCH = 1
#: One CPU worker (one dispatching parent) for all CPU processes of a host.
DEFAULT_CPU_WORKERS = 1
CpuPool = Literal["prefork", "solo"]
#: One worker process per CPU slot, supervised and scaled by ``taskfleet up`` (README,
#: "The CPU pool"; BENCHMARKS.md measures it against prefork).
DEFAULT_CPU_POOL: CpuPool = "solo"
MAX_SPARE_PREFETCH = 100
#: Most jobs a solo worker takes per fetch (``taskfleet.routing.fetch_batch``).
DEFAULT_FETCH_BATCH = 8
MAX_FETCH_BATCH = 64

REDIS_SCHEMES = frozenset({"redis", "rediss"})
AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
DATABASE_SCHEMES = frozenset({"postgresql", "postgresql+psycopg", "postgres"})


S = TypeVar("S", bound=BaseSettings)


class ConfigError(ValueError):
    """Raised when the settings cannot describe a working fleet; the message names the setting."""


def _scheme(url: str) -> str:
    return urlsplit(url).scheme.lower()


def _env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


class Settings(BaseSettings):
    """Everything an operator can set, with defaults that run a laptop and a fleet alike.

    URLs left unset are served by the embedded dev stack (``taskfleet.devstack``) unless
    ``TASKFLEET_EMBEDDED=false``, in which case they are required.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", validate_default=True
    )

    broker_url: str | None = Field(None, description="Celery broker: redis://… or amqp://…")
    redis_url: str | None = Field(
        None, description="Redis for results and shared state (defaults to a Redis broker)"
    )
    database_url: str | None = Field(None, description="PostgreSQL for durable results")
    embedded: bool = Field(True, description="Start embedded Redis/Postgres for unset URLs")
    data_dir: str = Field(DEFAULT_DATA_DIR, description="Where the embedded stack keeps data")

    cpu_queue: str = DEFAULT_CPU_QUEUE
    io_queue: str = DEFAULT_IO_QUEUE
    dlq_suffix: str = DEFAULT_DLQ_SUFFIX

    cpu_concurrency: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=512)
    cpu_workers: int = Field(
        DEFAULT_CPU_WORKERS,
        ge=1,
        le=512,
        description=(
            "CPU worker instances sharing cpu_concurrency processes (one parent each; "
            "prefork only, a solo pool runs one worker per process)"
        ),
    )
    cpu_pool: CpuPool = Field(
        DEFAULT_CPU_POOL,
        description=(
            "solo (default): every CPU process is a worker of its own that runs its jobs "
            "inline (fewest hops per job, lowest latency); taskfleet up starts and stops "
            "them as the autoscaler asks; prefork: pool processes behind one parent per "
            "CPU worker, resized by remote control"
        ),
    )
    fork_workers: bool = Field(
        True,
        description=(
            "taskfleet up forks its solo CPU workers from a process that has imported their "
            "libraries once (a start in a fraction of an interpreter's); false: each is a new "
            "interpreter"
        ),
    )
    cpu_standby: bool = Field(
        True,
        description=(
            "With solo CPU workers under taskfleet up: keep one more booted and idle while "
            "the pool is below its maximum, so that a grow takes milliseconds, not a start"
        ),
    )
    cpu_growth_gate: bool = Field(
        True,
        description=(
            "With solo CPU workers under taskfleet up: beyond the core count, start another "
            "worker (or standby) only while the workers are not busy computing"
        ),
    )
    io_concurrency: int = Field(DEFAULT_IO_CONCURRENCY, ge=1, le=10_000)

    soft_time_limit: float = Field(DEFAULT_SOFT_TIME_LIMIT_S, gt=0)
    hard_time_limit: float = Field(DEFAULT_HARD_TIME_LIMIT_S, gt=0)
    visibility_timeout: float = Field(DEFAULT_VISIBILITY_TIMEOUT_S, gt=0)

    max_payload_bytes: int = Field(DEFAULT_MAX_PAYLOAD_BYTES, ge=256)
    result_expires: int = Field(DEFAULT_RESULT_EXPIRES_S, ge=60)
    result_retention: int = Field(DEFAULT_RESULT_RETENTION_S, ge=60)
    db_pool_size: int = Field(DEFAULT_DB_POOL_SIZE, ge=1, le=200)
    redis_pool_size: int = Field(DEFAULT_REDIS_POOL_SIZE, ge=1, le=10_000)
    spare_prefetch: int = Field(DEFAULT_SPARE_PREFETCH, ge=0, le=MAX_SPARE_PREFETCH)
    settle_heap: bool = Field(
        True,
        description="Worker processes exempt their start-up objects from garbage collection",
    )
    pipeline_result_writes: bool = Field(
        True,
        description=(
            "Prefork pool processes and solo workers send result writes without waiting for Redis"
        ),
    )

    fast_transport: bool = Field(
        True,
        description=(
            "Redis workers run taskfleet's transport (merged unacked bookkeeping, atomic "
            "fetch, owner-tagged deliveries restored within seconds of a worker's death), "
            "which relies on private kombu and redis-py internals (false: stock kombu's "
            "Redis transport, reading the most urgent priority first; a dead worker's jobs "
            "wait for the visibility timeout, and atomic_fetch has no effect)"
        ),
    )
    atomic_fetch: bool = Field(
        True,
        description=(
            "Redis workers pop and record each delivery in one Lua call, so a worker killed "
            "mid-fetch loses nothing (false: kombu's BRPOP, then a separate record)"
        ),
    )

    flower_basic_auth: SecretStr | None = Field(
        None, description="user:password for Flower (generated by `taskfleet up` when unset)"
    )
    task_events: bool = Field(
        False,
        description="Workers send task events from the start (Flower turns them on when it runs)",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    lean_worker_cli: bool = Field(
        True,
        description="taskfleet up starts workers through taskfleet.workers.main, not `celery`",
    )
    fetch_batch: int = Field(
        DEFAULT_FETCH_BATCH,
        ge=1,
        le=MAX_FETCH_BATCH,
        description="Most jobs a solo worker takes per fetch from a backlog of short jobs",
    )
    log_jobs: bool = Field(
        False,
        description="Workers log Celery's two lines per job (received, succeeded) at INFO",
    )

    @field_validator("broker_url")
    @classmethod
    def _known_broker(cls, value: str | None) -> str | None:
        if value is not None and _scheme(value) not in REDIS_SCHEMES | AMQP_SCHEMES:
            raise ValueError(
                f"{_env_name('broker_url')} must be redis://, rediss://, amqp:// or amqps://, "
                f"got {_scheme(value)!r}"
            )
        return value

    @field_validator("redis_url")
    @classmethod
    def _known_redis(cls, value: str | None) -> str | None:
        if value is not None and _scheme(value) not in REDIS_SCHEMES:
            raise ValueError(f"{_env_name('redis_url')} must be redis:// or rediss://")
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value is not None and _scheme(value) not in DATABASE_SCHEMES:
            raise ValueError(f"{_env_name('database_url')} must be a postgresql:// URL")
        return value

    @field_validator("cpu_queue", "io_queue", "dlq_suffix")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not value or any(ch.isspace() or ch in "*?[]" for ch in value):
            raise ValueError("queue names must be non-empty, without spaces or glob characters")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if self.cpu_queue == self.io_queue:
            raise ValueError(
                f"{_env_name('cpu_queue')} and {_env_name('io_queue')} must differ "
                f"(both are {self.cpu_queue!r})"
            )
        if self.cpu_pool == "prefork" and self.cpu_workers > self.cpu_concurrency:
            raise ValueError(
                f"{_env_name('cpu_workers')} ({self.cpu_workers}) must not exceed "
                f"{_env_name('cpu_concurrency')} ({self.cpu_concurrency}): every CPU worker "
                "runs at least one process"
            )
        if self.soft_time_limit >= self.hard_time_limit:
            raise ValueError(
                f"{_env_name('soft_time_limit')} ({self.soft_time_limit}) must be below "
                f"{_env_name('hard_time_limit')} ({self.hard_time_limit})"
            )
        if self.broker_is_redis and self.hard_time_limit >= self.visibility_timeout:
            raise ValueError(
                f"{_env_name('hard_time_limit')} ({self.hard_time_limit}) must be below "
                f"{_env_name('visibility_timeout')} ({self.visibility_timeout}): on Redis a job "
                "still running when the visibility timeout ends is delivered again"
            )
        if not self.embedded:
            missing = [
                _env_name(name)
                for name in ("broker_url", "database_url")
                if getattr(self, name) is None
            ]
            if self.redis_url is None and not self.broker_is_redis:
                missing.append(_env_name("redis_url"))
            if missing:
                raise ValueError(
                    f"{', '.join(missing)} must be set when {_env_name('embedded')}=false"
                )
        return self

    @property
    def broker_is_redis(self) -> bool:
        """Whether the broker is Redis (unset means the embedded Redis)."""
        return self.broker_url is None or _scheme(self.broker_url) in REDIS_SCHEMES

    @property
    def broker_is_amqp(self) -> bool:
        """Whether the broker is RabbitMQ."""
        return not self.broker_is_redis

    def dlq_name(self, queue: str) -> str:
        """Name of the dead-letter queue that belongs to ``queue``."""
        return f"{queue}{self.dlq_suffix}"


def load_validated(settings_cls: type[S], what: str, **overrides: object) -> S:
    """Build any taskfleet settings class, turning validation errors into one ConfigError.

    Every problem names its environment variable (the class's ``env_prefix`` + field name).
    """
    prefix = str(settings_cls.model_config.get("env_prefix") or "")
    try:
        return settings_cls(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{prefix}{str(err['loc'][0]).upper() if err['loc'] else ''}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid {what}: {problems}") from None


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment, turning validation errors into one ConfigError."""
    return load_validated(Settings, "taskfleet settings", **overrides)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
