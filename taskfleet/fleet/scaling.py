"""The supervisor's side of autoscaling solo CPU workers: start and stop worker processes.

A solo worker is one process; the pool grows by one more process and shrinks by one fewer.
``taskfleet up`` registers its solo CPU workers as one slot group
(:mod:`taskfleet.scheduler.slots`), and the autoscaler, wherever its beat runs, asks for a
size in Redis. :class:`SlotScaler` applies it, a step per supervision round:

* growing promotes the group's standby first: a solo worker started ahead of need, booted
  and idle on a queue no job is routed to, which takes the CPU queue within
  milliseconds of being registered as a member (:mod:`taskfleet.workers.standby`). Further
  processes are started as ``cpu-worker-N``. All are watched (restarted, checked for stalls)
  like the first ones. While the group is below its maximum, a new standby is started after
  each promotion (``TASKFLEET_CPU_STANDBY=false``: none);
* beyond the core count, a worker is started (and a standby booted) only while the members
  are not busy computing (:mod:`taskfleet.fleet.cpu_gate`): there another process only
  splits the same cores, after taking CPU to boot. The grow waits, and goes ahead once the
  members' CPU use falls (the backlog drained, or jobs that wait);
* shrinking retires the newest workers: SIGTERM, a warm shutdown in which a solo worker
  finishes the job it runs. One that is still running after the hard time limit and a
  margin is killed; its job goes back to the queue by the reclaim, as after any crash. The
  first worker, which hosts the result persister, is never retired.

Redis unreachable: the size stays as it is, and the next round tries again.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import redis

from taskfleet.fleet.children import Child, RestartFailed
from taskfleet.fleet.cpu_gate import CpuGate
from taskfleet.scheduler.slots import MAX_SLOTS, REGISTER_EVERY_S, SlotGroup, SlotRegistry

log = logging.getLogger(__name__)

#: Seconds between two reads of the size asked for (one HGET): a grow waits for it.
POLL_EVERY_S = 0.1
#: The fewest processes a group keeps (its first worker hosts the persister).
MIN_SLOTS = 1


class SlotHost(Protocol):
    """What the scaler needs of the fleet (implemented by :class:`~taskfleet.fleet.Fleet`)."""

    def start_slot(self, index: int, standby_for: str | None = None) -> Child:
        """Launch CPU worker number ``index`` and watch it (``standby_for``: as the standby
        of that group, promoted once the group registers it).

        Raises:
            RestartFailed: It could not be launched.
        """

    def retire_slot(self, child: Child) -> None:
        """Stop watching ``child`` and ask it to finish its job and exit (SIGTERM)."""

    def kill_slot(self, child: Child) -> None:
        """Kill a retiring ``child`` that did not exit in time, and its process group."""

    def forget_slot(self, child: Child) -> None:
        """``child`` has exited after retiring: drop it from the fleet."""


@dataclass
class _Retiring:
    child: Child
    deadline: float
    index: int


class SlotScaler:
    """Keeps a fleet's solo CPU workers at the size the autoscaler asked for.

    Args:
        group: The group's id (unique per supervisor).
        queue: The CPU pool's queue its workers consume.
        host: The fleet.
        registry: The slot keys in Redis.
        members: The CPU workers running now, oldest first, with their indexes.
        retire_grace_s: Seconds a retiring worker gets to finish its job before it is killed.
        max_size: The most processes the autoscaler may ask for (no standby at that size).
        standby: Whether to keep a standby worker while below ``max_size``.
        gate: Holds back growth beyond the core count while the members compute (None:
            grows as asked).
        clock: Monotonic seconds (the registration's ``at`` is wall-clock time).
        wall: Wall-clock seconds.
    """

    def __init__(
        self,
        group: str,
        queue: str,
        host: SlotHost,
        registry: SlotRegistry,
        members: list[tuple[int, Child]],
        retire_grace_s: float,
        max_size: int = MAX_SLOTS,
        standby: bool = False,
        gate: CpuGate | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """Own ``members``; nothing is read or started yet."""
        self.group = group
        self.queue = queue
        self.host = host
        self.registry = registry
        self.members = list(members)
        self.retire_grace_s = retire_grace_s
        self.clock = clock
        self.wall = wall
        self.retiring: list[_Retiring] = []
        self.max_size = max_size
        self.keeps_standby = standby
        self.gate = gate
        #: Grows the gate has held back (an episode counts once).
        self.held_back = 0
        self._holding = False
        #: The standby worker and its index (None: none runs).
        self.standby: tuple[int, Child] | None = None
        #: Standby workers promoted so far.
        self.promotions = 0
        self._next_poll = 0.0
        self._next_register = 0.0

    @property
    def size(self) -> int:
        """Processes the group runs (retiring ones not counted)."""
        return len(self.members)

    def step(self) -> bool:
        """One round: reap retired workers, read the size asked for, apply it, register.

        Returns:
            Whether the fleet's children changed (started, retired or gone).
        """
        now = self.clock()
        changed = self._reap(now)
        if self.gate is not None:
            self.gate.sample(self._member_pids())
        if now < self._next_poll:
            return changed
        self._next_poll = now + POLL_EVERY_S
        try:
            target = self.registry.target(self.group)
            resized = target is not None and self.resize(target)
            if resized or now >= self._next_register:
                self._register(now)
        except redis.RedisError as exc:
            log.warning("slot group %s: Redis unreachable, size kept: %s", self.group, exc)
            return changed
        return self._keep_standby() or changed or resized

    def resize(self, target: int) -> bool:
        """Start or retire workers until ``size == max(target, MIN_SLOTS)``; whether any did.

        A worker that cannot be launched is left for the next round.
        """
        target = max(MIN_SLOTS, target)
        changed = False
        while self.size < target:
            if self.standby is not None:  # registered below: it takes the queue in ms
                index, child = self.standby
                self.standby = None
                child.standby = False
                self.promotions += 1
            else:
                if not self._may_grow(target):
                    break
                index = self._free_index()
                try:
                    child = self.host.start_slot(index)
                except RestartFailed as exc:
                    log.warning("slot group %s: could not grow: %s", self.group, exc)
                    break
            self.members.append((index, child))
            changed = True
        while self.size > target:
            index, child = self.members.pop()
            self.host.retire_slot(child)
            self.retiring.append(_Retiring(child, self.clock() + self.retire_grace_s, index))
            changed = True
        if changed:
            log.info("slot group %s: %d worker processes", self.group, self.size)
        return changed

    def close(self) -> None:
        """The fleet stops: forget the group in Redis (best effort), close the client."""
        try:
            self.registry.unregister(self.group)
        except redis.RedisError as exc:
            log.warning("slot group %s: could not unregister: %s", self.group, exc)
        finally:
            self.registry.close()

    def _keep_standby(self) -> bool:
        """Start a standby if none runs and the group may still grow; whether one started."""
        if not self.keeps_standby or self.standby is not None or self.size >= self.max_size:
            return False
        if self.gate is not None and not self.gate.allows_growth(self.size, self._member_pids()):
            return False
        index = self._free_index()
        try:
            child = self.host.start_slot(index, standby_for=self.group)
        except RestartFailed as exc:
            log.warning("slot group %s: could not start a standby: %s", self.group, exc)
            return False
        self.standby = (index, child)
        return True

    def _may_grow(self, target: int) -> bool:
        """Whether the gate lets the group start another worker now (logged once per hold)."""
        if self.gate is None or self.gate.allows_growth(self.size, self._member_pids()):
            self._holding = False
            return True
        if not self._holding:
            self._holding = True
            self.held_back += 1
            log.info(
                "slot group %s: %d workers on %d cores are busy computing: the grow to %d "
                "waits until they are not",
                self.group,
                self.size,
                self.gate.cores,
                target,
            )
        return False

    def _member_pids(self) -> list[int]:
        return [c.pid for _, c in self.members if c.pid is not None]

    def _free_index(self) -> int:
        """The lowest worker number no member, standby or retiring worker holds: a node
        name is never worn by two live workers."""
        taken = {i for i, _ in self.members}
        taken |= {r.index for r in self.retiring}
        if self.standby is not None:
            taken.add(self.standby[0])
        return next(i for i in itertools.count(1) if i not in taken)

    def _reap(self, now: float) -> bool:
        gone = False
        for entry in list(self.retiring):
            if entry.child.returncode() is not None:
                self.retiring.remove(entry)
                self.host.forget_slot(entry.child)
                gone = True
            elif now >= entry.deadline:
                self.host.kill_slot(entry.child)
                entry.deadline = float("inf")  # killed once; reaped when it is gone
        return gone

    def _register(self, now: float) -> None:
        nodes = tuple(c.nodename for _, c in self.members if c.nodename is not None)
        self.registry.register(SlotGroup(self.group, self.queue, self.size, nodes, self.wall()))
        self._next_register = now + REGISTER_EVERY_S
