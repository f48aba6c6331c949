"""Shared constants and helpers: the payload, deadlines, polling, statistics."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

PAYLOAD_TARGET_BYTES = 200
"""Size of the JSON argument every benchmark job carries."""

WORKER_PROCS = 2
"""Worker processes per system (the machine has 2 cores)."""

WARMUP_JOBS = 20
"""Jobs run through freshly started workers before measuring (also proves readiness)."""

WORKER_READY_TIMEOUT_S = 60.0
"""Bound on worker start-up plus the warm-up batch."""

WORKER_STOP_TIMEOUT_S = 15.0
"""Bound on a graceful worker stop before SIGKILL."""

POLL_INTERVAL_S = 0.01
"""Sleep between two completion polls that found nothing new."""

RESULT_CHECK_CHUNK = 100
"""Oldest pending result keys checked per round trip (jobs finish roughly in order, so a
small window keeps the polling cheap; a fully done window is followed by the next at once)."""

MIN_DRAIN_RATE = 25.0
"""Jobs/s below which a wait for completion is declared stuck (bounds every wait)."""

DRAIN_GRACE_S = 30.0
"""Fixed allowance added to every completion wait."""


def make_payload(index: int) -> dict[str, Any]:
    """A JSON-serialisable argument of about :data:`PAYLOAD_TARGET_BYTES` bytes.

    Args:
        index: Job number, embedded so payloads differ.

    Returns:
        The payload dict.
    """
    base: dict[str, Any] = {"job": index, "tenant": "bench", "tags": ["a", "b"], "pad": ""}
    pad = PAYLOAD_TARGET_BYTES - len(json.dumps(base, separators=(",", ":")))
    base["pad"] = "x" * max(pad, 0)
    return base


def completion_timeout(n: int) -> float:
    """Upper bound, in seconds, on draining ``n`` jobs.

    Args:
        n: Number of jobs.

    Returns:
        Seconds.
    """
    return DRAIN_GRACE_S + n / MIN_DRAIN_RATE


class BenchTimeout(RuntimeError):
    """A bounded wait ran out (workers stuck, a service down...)."""


def poll_until(
    check: Callable[[], bool], timeout: float, what: str, interval: float = POLL_INTERVAL_S
) -> None:
    """Call ``check`` until it returns True, at most ``timeout`` seconds.

    Args:
        check: Returns True once the condition holds; called again right away after progress.
        timeout: Seconds.
        what: Description for the error.
        interval: Sleep between two failed checks.

    Raises:
        BenchTimeout: The condition did not hold in time.
    """
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise BenchTimeout(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class Summary:
    """Median, min and max of repeated measurements."""

    median: float
    low: float
    high: float
    runs: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        """Summarise ``values`` (at least one).

        Args:
            values: The measurements.

        Returns:
            The summary.
        """
        return cls(statistics.median(values), min(values), max(values), len(values))

    def as_dict(self) -> dict[str, float]:
        """JSON form."""
        return {"median": self.median, "min": self.low, "max": self.high, "runs": self.runs}


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values.

    Args:
        sorted_values: Ascending values, not empty.
        fraction: 0..1, e.g. 0.99.

    Returns:
        The percentile.
    """
    rank = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values)) - 1))
    return sorted_values[rank]
