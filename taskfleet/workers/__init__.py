"""Worker pool profiles, lifecycle signals and per-process connection pools."""

from __future__ import annotations

from taskfleet.workers.profiles import PROFILES, WorkerProfile, cpu_profile, io_profile

__all__ = ["PROFILES", "WorkerProfile", "cpu_profile", "io_profile"]
