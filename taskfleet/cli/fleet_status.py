"""What ``taskfleet up`` prints about its children's deaths and restarts, and ``ps``'s table."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from taskfleet.cli.output import console
from taskfleet.fleet import GIVE_UP_CRASHES, GIVE_UP_WINDOW_S, Event


def print_event(event: Event) -> None:
    """One line per death, restart and recovery of a supervised child (``taskfleet up``)."""
    name = escape(event.name)
    if event.kind == "died":
        console.print(
            f"[yellow]{name}[/] (pid {event.pid}) died: {escape(event.detail)}; "
            f"restarting in {event.seconds:.1f}s "
            f"(crash {event.crashes_in_window} within {GIVE_UP_WINDOW_S:.0f}s; "
            f"gives up at {GIVE_UP_CRASHES})"
        )
    elif event.kind == "restarted":
        console.print(f"{name} restarted as pid {event.pid} ({event.restarts} restarts so far)")
    elif event.kind == "ready":
        console.print(f"[green]{name}[/] back: {escape(event.detail)}")


def status_table(doc: dict[str, Any]) -> Table:
    """The children of a status document as a table."""
    table = Table(title="taskfleet up", title_justify="left")
    for column in (
        "name",
        "pid",
        "state",
        "restarts",
        f"crashes/{GIVE_UP_WINDOW_S:.0f}s",
        "last exit",
    ):
        table.add_column(column)
    children = doc.get("children") or {}
    for name, entry in children.items():
        table.add_row(
            escape(str(name)),
            str(entry.get("pid") or "-"),
            str(entry.get("state", "?")),
            str(entry.get("restarts", 0)),
            str(entry.get("crashes_in_window", 0)),
            escape(str(entry.get("last_exit") or "-")),
        )
    return table
