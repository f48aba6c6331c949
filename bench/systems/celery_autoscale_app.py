"""Stock Celery app for W7 (``celery -A bench.systems.celery_autoscale_app worker --autoscale``).

The app of :mod:`bench.systems.celery_app` (defaults untouched but the queue name) plus a
``bench.checksum`` task whose body is the same as taskfleet's ``cpu.checksum``. Configured
from ``BENCH_CELERY_BROKER`` / ``BENCH_CELERY_BACKEND`` like that module.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from celery import Celery

from bench.systems import celery_app as capp

CHECKSUM_TASK = "bench.checksum"


def checksum_body(payload: dict[str, Any]) -> dict[str, Any]:
    """SHA-256 of the payload's canonical JSON, iterated ``rounds`` times (as ``cpu.checksum``)."""
    rounds = int(payload.get("rounds", 1))
    digest = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return {"sha256": digest.hex(), "rounds": rounds}


def make_app(broker: str | None, backend: str | None) -> tuple[Celery, Any]:
    """The stock app with the checksum task registered.

    Args:
        broker: Broker URL (Redis).
        backend: Result backend URL (Redis).

    Returns:
        The app and the checksum task.
    """
    celery_app, _ = capp.make_app(broker, backend, ignore=False, counter_url=None)

    @celery_app.task(name=CHECKSUM_TASK)
    def checksum(payload: dict[str, Any]) -> dict[str, Any]:
        """The CPU-bound job W7 replays."""
        return checksum_body(payload)

    return celery_app, checksum


app, checksum = make_app(os.environ.get(capp.BROKER_ENV), os.environ.get(capp.BACKEND_ENV))
