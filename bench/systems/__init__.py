"""One module per system under test, each a :class:`bench.systems.base.System`."""

from __future__ import annotations

from bench.systems.base import System

SYSTEM_NAMES = (
    "taskfleet",
    "taskfleet_prefork",
    "taskfleet_per_core",
    "taskfleet_metrics",
    "celery_redis",
    "celery_db",
    "celery_ignore",
    "dramatiq",
    "rq",
)


def make_system(name: str) -> System:
    """Instantiate a system by name (imports lazily so a missing extra only hits its system).

    Args:
        name: One of :data:`SYSTEM_NAMES`.

    Returns:
        The system, not started.

    Raises:
        ValueError: Unknown name.
    """
    if name == "taskfleet":
        from bench.systems.taskfleet import TaskfleetSystem

        return TaskfleetSystem()
    if name == "taskfleet_prefork":
        from bench.systems.taskfleet import TaskfleetPreforkSystem

        return TaskfleetPreforkSystem()
    if name == "taskfleet_per_core":
        from bench.systems.taskfleet import TaskfleetPerCoreSystem

        return TaskfleetPerCoreSystem()
    if name == "taskfleet_metrics":
        from bench.systems.taskfleet import TaskfleetMetricsSystem

        return TaskfleetMetricsSystem()
    if name == "celery_redis":
        from bench.systems.celery_redis import CeleryRedisSystem

        return CeleryRedisSystem()
    if name == "celery_db":
        from bench.systems.celery_db import CeleryDbSystem

        return CeleryDbSystem()
    if name == "celery_ignore":
        from bench.systems.celery_ignore import CeleryIgnoreSystem

        return CeleryIgnoreSystem()
    if name == "dramatiq":
        from bench.systems.dramatiq import DramatiqSystem

        return DramatiqSystem()
    if name == "rq":
        from bench.systems.rq import RqSystem

        return RqSystem()
    raise ValueError(f"unknown system {name!r}; known: {', '.join(SYSTEM_NAMES)}")
