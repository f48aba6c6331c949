"""The supervisor's status file: what runs, how often it was restarted, the latest events.

``taskfleet up`` rewrites ``<data dir>/fleet-status.json`` (atomically) at start and on every
death, restart and recovery; ``taskfleet ps`` prints it. It is a snapshot for people, not a
lock: a supervisor that was killed leaves its last one behind, which ``ps`` recognises by
the supervisor's pid being gone.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from taskfleet.devstack.processes import pid_alive
from taskfleet.devstack.state import atomic_write
from taskfleet.fleet.supervision import Event

STATUS_FILE_NAME = "fleet-status.json"
"""The status file, in the fleet's data folder."""

STATUS_EVENTS = 20
"""How many of the latest events the status file keeps."""


class StatusFile:
    """Keeps ``<data_dir>/fleet-status.json`` up to date.

    Args:
        data_dir: The fleet's data folder.
    """

    def __init__(self, data_dir: Path) -> None:
        """Write nothing yet."""
        self.path = data_dir / STATUS_FILE_NAME
        self.events: list[dict[str, Any]] = []

    def add(self, event: Event) -> None:
        """Remember ``event`` (the latest :data:`STATUS_EVENTS` are kept)."""
        entry = {"at": _now(), **asdict(event)}
        self.events = [*self.events, entry][-STATUS_EVENTS:]

    def write(self, children: dict[str, dict[str, object]]) -> None:
        """Save the children's status and the latest events."""
        doc = {
            "supervisor_pid": os.getpid(),
            "updated_at": _now(),
            "children": children,
            "events": self.events,
        }
        atomic_write(self.path, json.dumps(doc, indent=2) + "\n")


def read_status(data_dir: Path) -> dict[str, Any] | None:
    """The last status ``taskfleet up`` wrote in ``data_dir`` (None if none or unreadable).

    The result has ``supervisor_running`` added: whether that supervisor still runs.
    """
    try:
        doc = json.loads((data_dir / STATUS_FILE_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    pid = doc.get("supervisor_pid")
    doc["supervisor_running"] = isinstance(pid, int) and pid_alive(pid)
    return doc


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
