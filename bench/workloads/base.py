"""What every workload receives, and the run-with-workers harness they share."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from bench.systems import make_system
from bench.systems.base import System

log = logging.getLogger("bench")
T = TypeVar("T")

DEFAULT_N = 3000
QUICK_N = 300
DEFAULT_RUNS = 3
DEFAULT_LATENCY_RATE = 300.0
DEFAULT_LATENCY_SECONDS = 5.0
QUICK_LATENCY_SECONDS = 1.0


@dataclass(frozen=True)
class Options:
    """Command-line choices every workload reads."""

    systems: tuple[str, ...]
    runs: int = DEFAULT_RUNS
    n: int = DEFAULT_N
    procs: int = 2
    latency_rate: float = DEFAULT_LATENCY_RATE
    latency_seconds: float = DEFAULT_LATENCY_SECONDS
    quick: bool = False
    #: Runs of the slow workloads (W6, W7): 1 unless ``--runs`` is given.
    long_runs: int = 1


def with_workers(system: System, procs: int, body: Callable[[System], T]) -> T:
    """Reset the system, start its workers, run ``body``, and always stop the workers.

    Args:
        system: The system.
        procs: Worker processes.
        body: The measurement, called once the workers finished a warm-up batch.

    Returns:
        What ``body`` returned.
    """
    system.reset()
    try:
        system.start_workers(procs)
        return body(system)
    finally:
        system.stop()


def open_system(name: str) -> System | str:
    """Instantiate a system, or return the error text if it cannot be built.

    Args:
        name: System name.
    """
    try:
        return make_system(name)
    except Exception as exc:
        log.error("cannot set up %s: %s", name, exc)
        return f"unavailable: {type(exc).__name__}: {exc}"


def failure(name: str, exc: BaseException) -> str:
    """Log a failed measurement and return a short text for the table.

    Args:
        name: System name.
        exc: The error.
    """
    log.error("%s failed: %s\n%s", name, exc, traceback.format_exc())
    return f"failed: {type(exc).__name__}: {str(exc)[:120]}"
