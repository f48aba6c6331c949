"""An in-process :class:`taskfleet.fleet.Fleet` (what ``taskfleet up`` runs) for a test."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from taskfleet.config import Settings
from taskfleet.fleet import Fleet
from taskfleet.fleet.children import FleetOptions


@contextmanager
def started_fleet(settings: Settings, options: FleetOptions, ready_s: float) -> Iterator[Fleet]:
    """A fleet started and ready (within ``ready_s``) for the block; stopped after it, with
    nothing of it left running."""
    running = Fleet(settings, options)
    running.start()
    try:
        running.wait_ready(ready_s)
        yield running
    finally:
        running.stop()
    assert running.leftovers() == []
