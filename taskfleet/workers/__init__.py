"""Worker pool profiles, lifecycle signals and per-process connection pools.

The profiles are imported when first asked for (``taskfleet.workers.PROFILES``): they bring
kombu (the routing topology), which the result persister, a process that imports
``taskfleet.workers.persister_watch`` and ``taskfleet.workers.resources``, does not use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskfleet.workers.profiles import PROFILES, WorkerProfile, cpu_profile, io_profile

__all__ = ["PROFILES", "WorkerProfile", "cpu_profile", "io_profile"]


def __getattr__(name: str) -> Any:
    """The names of :data:`__all__`, from ``taskfleet.workers.profiles`` on first use."""
    if name in __all__:
        from taskfleet.workers import profiles

        return getattr(profiles, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
