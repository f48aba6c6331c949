"""Sandbox settings, read from ``TASKFLEET_SANDBOX_*``: per-run defaults and operator ceilings.

Each limit has a default (used when a job does not ask) and a ceiling (the most a job may
ask for). A job asking above a ceiling is refused, not clamped: a caller who asked for 120 s
and silently got 30 s would misread a timeout.
"""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from taskfleet.config.settings import load_validated

ENV_PREFIX = "TASKFLEET_SANDBOX_"
MIB = 1024 * 1024
DEFAULT_BASE_DIR = str(Path(tempfile.gettempdir()) / "taskfleet-sandbox")
#: Host uids for sandboxes: each run gets two fresh ones (ns root, program) from this range.
DEFAULT_UID_BASE = 1_500_000_000
DEFAULT_UID_SLOTS = 1 << 20
LIMIT_NAMES = (
    "wall_time_s",
    "cpu_time_s",
    "memory_bytes",
    "processes",
    "file_size_bytes",
    "open_files",
    "output_bytes",
)


def _env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


class SandboxSettings(BaseSettings):
    """Operator knobs for sandbox jobs."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_default=True)

    allow_degraded: bool = Field(
        False, description="Run with rlimits only where namespaces are unavailable"
    )
    base_dir: str = Field(DEFAULT_BASE_DIR, description="Host directory for per-run scratch")
    uid_base: int = Field(DEFAULT_UID_BASE, ge=100_000, le=4_000_000_000)
    uid_slots: int = Field(DEFAULT_UID_SLOTS, ge=16, le=1 << 24)
    work_dir_bytes: int = Field(64 * MIB, ge=MIB, description="Size of the private work dir")
    mount_proc: bool = Field(
        True,
        description="Give each run a fresh /proc of its own PID namespace; false: an empty "
        "/proc, for a container whose /proc has masked paths (the kernel then refuses a new one)",
    )
    max_source_bytes: int = Field(256 * 1024, ge=1024)
    max_stdin_bytes: int = Field(1 * MIB, ge=0)
    cgroup_root: str | None = Field(
        None,
        description="A delegated cgroup v2 directory for whole-run limits (one child per run); "
        "unset: limits are per process only",
    )
    cgroup_cpus: float = Field(1.0, gt=0, le=1024, description="CPU cores per run (cpu.max)")

    default_wall_time_s: float = Field(10.0, gt=0)
    default_cpu_time_s: int = Field(5, ge=1)
    default_memory_bytes: int = Field(256 * MIB, ge=32 * MIB)
    default_processes: int = Field(32, ge=1)
    default_file_size_bytes: int = Field(16 * MIB, ge=0)
    default_open_files: int = Field(64, ge=16)
    default_output_bytes: int = Field(1 * MIB, ge=1024)

    max_wall_time_s: float = Field(60.0, gt=0)
    max_cpu_time_s: int = Field(60, ge=1)
    max_memory_bytes: int = Field(1024 * MIB, ge=32 * MIB)
    max_processes: int = Field(256, ge=1)
    max_file_size_bytes: int = Field(256 * MIB, ge=0)
    max_open_files: int = Field(1024, ge=16)
    max_output_bytes: int = Field(16 * MIB, ge=1024)

    @model_validator(mode="after")
    def _defaults_within_ceilings(self) -> SandboxSettings:
        for name in LIMIT_NAMES:
            default, ceiling = getattr(self, f"default_{name}"), getattr(self, f"max_{name}")
            if default > ceiling:
                raise ValueError(
                    f"{_env_name('default_' + name)} ({default}) must not exceed "
                    f"{_env_name('max_' + name)} ({ceiling})"
                )
        return self

    def defaults(self) -> dict[str, float | int]:
        """The limits a job gets when it asks for nothing."""
        return {name: getattr(self, f"default_{name}") for name in LIMIT_NAMES}

    def ceilings(self) -> dict[str, float | int]:
        """The most a job may ask for, per limit."""
        return {name: getattr(self, f"max_{name}") for name in LIMIT_NAMES}


def load_sandbox_settings(**overrides: object) -> SandboxSettings:
    """Read sandbox settings, turning validation errors into one ConfigError naming the variable.

    Raises:
        ConfigError: a value is invalid; the message names the environment variable.
    """
    return load_validated(SandboxSettings, "sandbox settings", **overrides)


@lru_cache(maxsize=1)
def get_sandbox_settings() -> SandboxSettings:
    """The process-wide sandbox settings, read once."""
    return load_sandbox_settings()
