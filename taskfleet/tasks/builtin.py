"""Built-in jobs: small, real units of CPU and I/O work used by the demo, tests and benchmarks."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from taskfleet.tasks.base import job
from taskfleet.tasks.job_app import app

MAX_CHECKSUM_ROUNDS = 10_000
MAX_WAIT_MS = 60_000


@job(app, "cpu.noop", "cpu")
def cpu_noop(payload: Any = None) -> dict[str, Any]:
    """Do nothing on the CPU pool; return a small dict (benchmarks' W1)."""
    return {"ok": True}


@job(app, "io.noop", "io")
def io_noop(payload: Any = None) -> dict[str, Any]:
    """Do nothing on the I/O pool; return a small dict."""
    return {"ok": True}


@job(app, "cpu.checksum", "cpu")
def checksum(payload: dict[str, Any]) -> dict[str, Any]:
    """SHA-256 of the payload's canonical JSON, iterated ``rounds`` times (CPU-bound work).

    Raises:
        ValueError: ``rounds`` is not an int in 1..MAX_CHECKSUM_ROUNDS.
    """
    rounds = payload.get("rounds", 1) if isinstance(payload, dict) else None
    if (
        not isinstance(rounds, int)
        or isinstance(rounds, bool)
        or not 1 <= rounds <= MAX_CHECKSUM_ROUNDS
    ):
        raise ValueError(f"rounds must be an int in 1..{MAX_CHECKSUM_ROUNDS}, got {rounds!r}")
    digest = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return {"sha256": digest.hex(), "rounds": rounds}


@job(app, "io.wait", "io")
def wait(payload: dict[str, Any]) -> dict[str, Any]:
    """Wait ``ms`` milliseconds without using the CPU (stands in for a network call).

    Raises:
        ValueError: ``ms`` is not a number in 0..MAX_WAIT_MS.
    """
    ms = payload.get("ms", 0) if isinstance(payload, dict) else None
    if not isinstance(ms, int | float) or isinstance(ms, bool) or not 0 <= ms <= MAX_WAIT_MS:
        raise ValueError(f"ms must be a number in 0..{MAX_WAIT_MS}, got {ms!r}")
    start = time.monotonic()
    time.sleep(ms / 1000)  # cooperative under the gevent I/O pool
    return {"waited_ms": round((time.monotonic() - start) * 1000, 3)}
