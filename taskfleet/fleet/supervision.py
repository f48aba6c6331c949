"""The supervision loop: notice dead (or stalled) children, restart them with backoff, or give up.

It knows the supervised things only through :class:`Watched` (a worker, beat, Flower, the
embedded Redis or PostgreSQL), so the loop is tested with fakes, an injected clock and an
injected sleep. Every death, restart and recovery is an :class:`Event`, handed to a
callback (``taskfleet up`` prints them and keeps the status file).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from taskfleet.fleet.children import FleetError, RestartFailed
from taskfleet.fleet.restarts import Clock, CrashHistory, RestartPolicy

EventKind = Literal["died", "restarted", "ready", "gave_up"]


class Watched(Protocol):
    """Something the supervisor keeps running."""

    @property
    def name(self) -> str:
        """Display name (``cpu-worker``, ``redis``, ...)."""

    @property
    def log_path(self) -> Path:
        """Its log file."""

    @property
    def pid(self) -> int | None:
        """Its current pid, if known."""

    @property
    def runs_jobs(self) -> bool:
        """Whether it runs jobs, which may kill it (a worker): then a death after it served
        is no crash loop, and never makes the supervisor give up."""

    @property
    def standby(self) -> bool:
        """Whether it is a standby worker, booted ahead of need and not serving yet."""

    def exited(self) -> str | None:
        """None while it runs, else how it ended (``killed by SIGKILL (9)``)."""

    def restart(self) -> None:
        """Start it again, clearing what the dead one left.

        Raises:
            RestartFailed: It could not start (counts as a crash).
            FleetError: Restarting cannot help (the fleet stops).
        """

    def came_up(self) -> bool:
        """Whether its current process showed it came up, even if it has died since (a
        worker's mark at ``worker_ready``)."""

    def ready(self) -> bool:
        """Whether it serves again (a worker answers a ping, a port accepts connections)."""

    def stalled(self) -> str | None:
        """None while it serves, else why it counts as dead though it has not exited (a
        worker that answers no ping); asked only while it runs and nothing restarts."""

    def forgive(self) -> None:
        """Something it depends on was just restarted: judge :meth:`stalled` from now."""


@dataclass(frozen=True)
class Event:
    """One thing that happened to a supervised child.

    Attributes:
        kind: ``died``, ``restarted``, ``ready`` (serves again) or ``gave_up``.
        name: The child.
        pid: Its pid (the dead one for ``died``, the new one afterwards).
        detail: How it ended (``died``), or the delay / recovery time, for people.
        restarts: Restarts of this child so far.
        crashes_in_window: Its crashes in the policy's window.
        seconds: ``died``: delay before the restart; ``ready``: seconds since it died.
    """

    kind: EventKind
    name: str
    pid: int | None
    detail: str
    restarts: int
    crashes_in_window: int
    seconds: float = 0.0


class GaveUp(FleetError):
    """A child crashed too often in a short window; the supervisor stops the fleet.

    Attributes:
        name: The child.
        how: How it ended the last time (exit status or signal).
        crashes: Its crashes within ``window_s``.
        window_s: The window.
        log_path: Its log (its last lines say why).
    """

    def __init__(self, name: str, how: str, crashes: int, window_s: float, log_path: Path):
        """Say which child, how it ended, and where its log is."""
        super().__init__(
            f"giving up on {name}: it crashed {crashes} times within {window_s:.0f}s, "
            f"last {how}; log: {log_path}"
        )
        self.name = name
        self.how = how
        self.crashes = crashes
        self.window_s = window_s
        self.log_path = log_path


@dataclass
class _Slot:
    history: CrashHistory
    restart_at: float | None = None
    died_at: float | None = None
    awaiting_ready: bool = False
    restarts: int = 0
    last_exit: str | None = None


class Supervisor:
    """Keeps ``watched`` running: restart with backoff, give up on a burst of crashes.

    Args:
        watched: What to keep running; services first (nothing is pinged while one is
            down, and a worker's restart waits for them).
        policy: The restart policy.
        on_event: Called with every :class:`Event`.
        clock: Monotonic seconds.
        sleep: Pauses between two checks.
    """

    def __init__(
        self,
        watched: Sequence[Watched],
        policy: RestartPolicy | None = None,
        on_event: Callable[[Event], None] | None = None,
        clock: Clock = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Watch ``watched``; nothing is checked yet."""
        self.watched = list(watched)
        self.policy = policy or RestartPolicy()
        self.on_event = on_event or (lambda _event: None)
        self.clock = clock
        self.sleep = sleep
        self.slots = {w.name: _Slot(CrashHistory(self.policy, clock)) for w in self.watched}

    def add(self, item: Watched) -> None:
        """Watch one more thing from now on (a worker the pool just grew by)."""
        self.watched.append(item)
        self.slots[item.name] = _Slot(CrashHistory(self.policy, self.clock))

    def remove(self, name: str) -> None:
        """Stop watching ``name`` (a worker being retired: its exit is no crash)."""
        self.watched = [w for w in self.watched if w.name != name]
        self.slots.pop(name, None)

    def run(self, interval: float) -> None:
        """Check every ``interval`` seconds, forever (until GaveUp or an interrupt)."""
        while True:
            self.tick()
            self.sleep(interval)

    def tick(self) -> None:
        """One round: notice deaths, restart what is due, notice recoveries.

        Raises:
            GaveUp: A child crashed :attr:`RestartPolicy.give_up_crashes` times in the window.
        """
        for item in self.watched:
            slot = self.slots[item.name]
            if slot.restart_at is None:
                how = item.exited()
                if how is not None:
                    self._crashed(item, slot, how)
            if slot.restart_at is not None and self.clock() >= slot.restart_at:
                if self._blocked(item):
                    continue
                self._restart(item, slot)
        if any(s.restart_at is not None for s in self.slots.values()):
            return  # a service may be down: pinging now could block
        for item in self.watched:
            slot = self.slots[item.name]
            if slot.awaiting_ready:
                if item.exited() is None and item.ready():
                    slot.awaiting_ready = False
                    since = self.clock() - (slot.died_at or self.clock())
                    detail = f"serving again {since:.1f}s after it died"
                    self._emit("ready", item, slot, detail, since)
            elif (how := item.stalled()) is not None:
                self._crashed(item, slot, how)

    def status(self) -> dict[str, dict[str, object]]:
        """Each child's pid, state (``running``, ``starting``, ``restarting``, ``standby``),
        restarts, recent crashes and last exit."""
        out: dict[str, dict[str, object]] = {}
        for item in self.watched:
            slot = self.slots[item.name]
            state = "restarting" if slot.restart_at is not None else "running"
            if state == "running" and slot.awaiting_ready:
                state = "starting"
            elif state == "running" and item.standby:
                state = "standby"
            out[item.name] = {
                "pid": item.pid,
                "state": state,
                "restarts": slot.restarts,
                "crashes_in_window": slot.history.in_window(),
                "last_exit": slot.last_exit,
            }
        return out

    def _blocked(self, item: Watched) -> bool:
        """Whether an earlier item (a service) is still waiting for its own restart."""
        for other in self.watched:
            if other is item:
                return False
            if self.slots[other.name].restart_at is not None:
                return True
        return False

    def _crashed(self, item: Watched, slot: _Slot, how: str) -> None:
        came_up = not slot.awaiting_ready or item.came_up()
        decision = slot.history.record(served=item.runs_jobs and came_up)
        slot.last_exit = how
        if decision.give_up:
            self._emit("gave_up", item, slot, how)
            raise GaveUp(
                item.name, how, decision.crashes_in_window, self.policy.window_s, item.log_path
            )
        now = self.clock()
        slot.restart_at = now + decision.delay
        if not slot.awaiting_ready or slot.died_at is None:
            slot.died_at = now  # a child dying again before it served keeps the first death
        self._emit("died", item, slot, how, decision.delay)

    def _restart(self, item: Watched, slot: _Slot) -> None:
        slot.restart_at = None
        try:
            item.restart()
        except RestartFailed as exc:
            self._crashed(item, slot, f"restart failed: {exc}")
            return
        slot.restarts += 1
        slot.awaiting_ready = True
        for other in self.watched:  # a restarted service: its clients reconnect first
            other.forgive()
        self._emit("restarted", item, slot, f"restart {slot.restarts}")

    def _emit(
        self, kind: EventKind, item: Watched, slot: _Slot, detail: str, seconds: float = 0.0
    ) -> None:
        self.on_event(
            Event(
                kind=kind,
                name=item.name,
                pid=item.pid,
                detail=detail,
                restarts=slot.restarts,
                crashes_in_window=len(slot.history.recent),
                seconds=seconds,
            )
        )
