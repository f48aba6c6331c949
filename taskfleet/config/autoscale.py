"""Autoscaler settings, read from ``TASKFLEET_AUTOSCALE_*`` and validated at start.

Per pool (``cpu``/``io``): min and max concurrency per worker and for the whole pool, the
scale-up and scale-down steps (per worker, per tick) and the backlog one process should
carry. A minimum above its maximum, or a step of 0, fails at start naming the variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from taskfleet.config.settings import load_validated

AUTOSCALE_ENV_PREFIX = "TASKFLEET_AUTOSCALE_"
DEFAULT_INTERVAL_S = 5.0
DEFAULT_INSPECT_TIMEOUT_S = 1.0
DEFAULT_UP_COOLDOWN_S = 10.0
DEFAULT_DOWN_COOLDOWN_S = 30.0
DEFAULT_HYSTERESIS = 0.2
DEFAULT_TREND_SAMPLES = 6
DEFAULT_PREDICT_HORIZON_S = 10.0
DEFAULT_HISTORY_CAP = 1000
DEFAULT_CPU_WORKER_MAX = max(2, os.cpu_count() or 1)
DEFAULT_CPU_TARGET_BACKLOG = 4.0
DEFAULT_IO_WORKER_MIN = 10
DEFAULT_IO_WORKER_MAX = 200
#: The most one resize command adds or removes (``taskfleet.scheduler.control`` refuses more):
#: the ceiling of every step.
MAX_RESIZE_STEP = 1000
DEFAULT_IO_TARGET_BACKLOG = 2.0


@dataclass(frozen=True)
class PoolLimits:
    """Bounds and steps of one pool, as the policy reads them."""

    worker_min: int
    worker_max: int
    pool_min: int
    pool_max: int
    step_up: int
    step_down: int
    target_backlog: float


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    return f"{AUTOSCALE_ENV_PREFIX}{field.upper()}"


class AutoscaleSettings(BaseSettings):
    """Everything the autoscaler reads; defaults suit a laptop and a small fleet."""

    model_config = SettingsConfigDict(
        env_prefix=AUTOSCALE_ENV_PREFIX, env_file=".env", extra="ignore", validate_default=True
    )

    enabled: bool = True
    interval: float = Field(DEFAULT_INTERVAL_S, gt=0, description="Seconds between ticks")
    dry_run: bool = Field(False, description="Decide and log, never resize a pool")
    inspect_timeout: float = Field(DEFAULT_INSPECT_TIMEOUT_S, gt=0)
    up_cooldown: float = Field(DEFAULT_UP_COOLDOWN_S, ge=0)
    down_cooldown: float = Field(DEFAULT_DOWN_COOLDOWN_S, ge=0)
    hysteresis: float = Field(DEFAULT_HYSTERESIS, ge=0, lt=1)
    trend_samples: int = Field(DEFAULT_TREND_SAMPLES, ge=2, le=100)
    predict_horizon: float = Field(DEFAULT_PREDICT_HORIZON_S, ge=0)
    history_cap: int = Field(DEFAULT_HISTORY_CAP, ge=1, le=1_000_000)

    cpu_worker_min: int = Field(1, ge=1)
    cpu_worker_max: int = Field(DEFAULT_CPU_WORKER_MAX, ge=1)
    cpu_pool_min: int = Field(1, ge=0)
    cpu_pool_max: int = Field(64, ge=1)
    cpu_step_up: int = Field(4, ge=1, le=MAX_RESIZE_STEP)
    cpu_step_down: int = Field(1, ge=1, le=MAX_RESIZE_STEP)
    cpu_target_backlog: float = Field(DEFAULT_CPU_TARGET_BACKLOG, gt=0)

    io_worker_min: int = Field(DEFAULT_IO_WORKER_MIN, ge=1)
    io_worker_max: int = Field(DEFAULT_IO_WORKER_MAX, ge=1)
    io_pool_min: int = Field(DEFAULT_IO_WORKER_MIN, ge=0)
    io_pool_max: int = Field(1000, ge=1)
    io_step_up: int = Field(50, ge=1, le=MAX_RESIZE_STEP)
    io_step_down: int = Field(10, ge=1, le=MAX_RESIZE_STEP)
    io_target_backlog: float = Field(DEFAULT_IO_TARGET_BACKLOG, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> AutoscaleSettings:
        for pool in ("cpu", "io"):
            for scope in ("worker", "pool"):
                low, high = f"{pool}_{scope}_min", f"{pool}_{scope}_max"
                if getattr(self, low) > getattr(self, high):
                    raise ValueError(
                        f"{env_name(low)} ({getattr(self, low)}) must not exceed "
                        f"{env_name(high)} ({getattr(self, high)})"
                    )
        return self

    def limits(self, pool: str) -> PoolLimits:
        """The bounds and steps of ``pool`` (``cpu`` or ``io``)."""
        return PoolLimits(
            worker_min=getattr(self, f"{pool}_worker_min"),
            worker_max=getattr(self, f"{pool}_worker_max"),
            pool_min=getattr(self, f"{pool}_pool_min"),
            pool_max=getattr(self, f"{pool}_pool_max"),
            step_up=getattr(self, f"{pool}_step_up"),
            step_down=getattr(self, f"{pool}_step_down"),
            target_backlog=getattr(self, f"{pool}_target_backlog"),
        )


def load_autoscale_settings(**overrides: object) -> AutoscaleSettings:
    """Read the autoscaler settings, turning validation errors into one ConfigError.

    Raises:
        ConfigError: a value is invalid; the message names the variable.
    """
    return load_validated(AutoscaleSettings, "autoscaler settings", **overrides)
