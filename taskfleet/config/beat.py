"""One ``beat_schedule`` entry for a periodic internal job (no app import)."""

from __future__ import annotations

from typing import Any

from taskfleet.routing.priority import MAX_PRIORITY

#: Internal ticks jump ahead of queued jobs (9 is the most urgent priority).
TICK_PRIORITY = MAX_PRIORITY


def periodic_entry(name: str, task: str, interval_s: float) -> dict[str, Any]:
    """``{name: entry}`` running ``task`` every ``interval_s``; a run not started within one
    interval expires (the next one measures afresh)."""
    options = {"expires": interval_s, "priority": TICK_PRIORITY}
    return {name: {"task": task, "schedule": interval_s, "options": options}}
