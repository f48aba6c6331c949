"""Settings of worker groups: queues per group or region (``cpu@eu``, ``cpu@us``).

Read from ``TASKFLEET_WORKER_GROUPS`` (the groups, a JSON list), ``TASKFLEET_WORKER_GROUP``
(the group a worker started here joins) and ``TASKFLEET_GROUP_*`` (how producers choose and
when they fail over). With no group declared, nothing changes: producers publish to ``cpu``
and ``io``, workers consume them, and an enqueue pays nothing for groups.
"""

from __future__ import annotations

import re
from functools import lru_cache

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from taskfleet.config.settings import load_validated

ENV_PREFIX = "TASKFLEET_"
#: Between a pool's queue and its group in a group's queue name (``cpu@eu``).
GROUP_SEP = "@"
#: What a group's name may be made of (it is part of queue and Redis key names).
GROUP_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: No group: today's queues only.
DEFAULT_WORKER_GROUPS: tuple[str, ...] = ()
#: A producer reads the groups' backlog and live consumers at most this often (ms).
DEFAULT_GROUP_REFRESH_MS = 250
#: A group whose oldest job has waited longer than this (seconds) is failed over (None: never
#: for age; a group with no live consumer always is).
DEFAULT_GROUP_MAX_AGE_S: float | None = 30.0


class GroupSettings(BaseSettings):
    """Knobs of worker groups."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", validate_default=True
    )

    worker_groups: list[str] = Field(
        default_factory=lambda: list(DEFAULT_WORKER_GROUPS),
        description="the worker groups (regions), e.g. ['eu', 'us']; empty: no groups",
    )
    worker_group: str | None = Field(
        None, description="the group a worker started here joins (None: none)"
    )
    group_preferred: str | None = Field(
        None, description="a client's default group (None: the least backlogged live group)"
    )
    group_refresh_ms: int = Field(DEFAULT_GROUP_REFRESH_MS, ge=1, le=60_000)
    group_max_age: float | None = Field(DEFAULT_GROUP_MAX_AGE_S, gt=0)

    @field_validator("worker_groups")
    @classmethod
    def _valid_names(cls, groups: list[str]) -> list[str]:
        for name in groups:
            if not GROUP_NAME.match(name):
                raise ValueError(f"group name {name!r} must match {GROUP_NAME.pattern}")
        if len(set(groups)) != len(groups):
            raise ValueError("a group is named twice")
        return groups

    @field_validator("worker_group", "group_preferred")
    @classmethod
    def _declared(cls, name: str | None, info: ValidationInfo) -> str | None:
        if name is not None and name not in info.data.get("worker_groups", ()):
            raise ValueError(f"group {name!r} is not in {ENV_PREFIX}WORKER_GROUPS")
        return name

    def check(self, group: str | None) -> str | None:
        """``group``, if None or declared.

        Raises:
            ValueError: ``group`` is not in ``TASKFLEET_WORKER_GROUPS``.
        """
        if group is not None and group not in self.worker_groups:
            raise ValueError(f"group {group!r} is not in {ENV_PREFIX}WORKER_GROUPS")
        return group

    @property
    def enabled(self) -> bool:
        """Whether any group is declared."""
        return bool(self.worker_groups)


def group_queue(queue: str, group: str) -> str:
    """The queue of ``group`` for the pool queue ``queue`` (``cpu`` -> ``cpu@eu``)."""
    return f"{queue}{GROUP_SEP}{group}"


def load_group_settings(**overrides: object) -> GroupSettings:
    """Read and validate the settings, as one ConfigError naming each bad variable."""
    return load_validated(GroupSettings, "worker group settings", **overrides)


@lru_cache(maxsize=1)
def get_group_settings() -> GroupSettings:
    """The process-wide group settings, read once."""
    return load_group_settings()
