"""The fleet as the slot scaler's host: start, retire, kill and forget solo CPU workers.

:class:`~taskfleet.fleet.scaling.SlotScaler` decides how many solo CPU workers run;
:class:`FleetSlots` does it to a :class:`~taskfleet.fleet.supervisor.Fleet`: a new worker is
planned like the first ones (``cpu<N>-<supervisor pid>@<host>``, its own log, no persister),
launched with the fleet's environment and watched by its supervisor; a retired one leaves the
supervisor's watch first, so its exit is no crash.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from dataclasses import replace
from typing import TYPE_CHECKING

import redis

from taskfleet.config.autoscale import load_autoscale_settings
from taskfleet.devstack.processes import signal_group
from taskfleet.fleet.children import Child
from taskfleet.fleet.cpu_gate import CpuGate, can_measure
from taskfleet.fleet.environment import sanitize_url
from taskfleet.fleet.plan import worker_child
from taskfleet.fleet.processes import sweep_groups
from taskfleet.fleet.scaling import SlotScaler
from taskfleet.routing.topology import Topology
from taskfleet.scheduler.slots import SlotRegistry
from taskfleet.workers.profiles import cpu_profile
from taskfleet.workers.standby import STANDBY_GROUP_ENV

if TYPE_CHECKING:
    from taskfleet.fleet.supervisor import Fleet

#: Seconds a Redis call of the slot scaler may take (it runs in the supervision loop).
SLOT_REDIS_TIMEOUT_S = 2.0
#: Seconds what a retired worker left in its process group gets before SIGKILL.
SWEEP_TIMEOUT_S = 2.0
#: A retiring worker gets its hard time limit plus this to finish its job.
RETIRE_MARGIN_S = 30.0


class FleetSlots:
    """Implements :class:`~taskfleet.fleet.scaling.SlotHost` on a running fleet."""

    def __init__(self, fleet: Fleet) -> None:
        """Act on ``fleet``'s children and supervisor."""
        self.fleet = fleet

    def start_slot(self, index: int, standby_for: str | None = None) -> Child:
        """Launch solo CPU worker number ``index`` (2, 3, ...) and watch it; with
        ``standby_for`` (a slot group's id), as that group's standby
        (:mod:`taskfleet.workers.standby`): on the standby queue until it is promoted.

        Raises:
            RestartFailed: It could not be launched.
        """
        fleet = self.fleet
        profile = cpu_profile(fleet.settings, 1)
        profile = replace(profile, name=f"{profile.name}{index}")
        if standby_for is not None:
            profile = replace(
                profile, queues=(Topology.from_settings(fleet.settings).standby_queue,)
            )
        urls = fleet.resolve()
        child = worker_child(
            f"cpu-worker-{index}",
            profile,
            fleet.settings,
            broker=sanitize_url(urls.broker_url),
            data_dir=fleet.data_dir,
            tag=os.getpid(),
            persister=False,
        )
        if standby_for is not None:
            child.extra_env[STANDBY_GROUP_ENV] = standby_for
            child.standby = True
        fleet.launch(child, urls)
        fleet.children.append(child)
        if fleet.supervisor is not None:
            fleet.supervisor.add(fleet.watch(child))
        return child

    def retire_slot(self, child: Child) -> None:
        """Stop watching ``child``; SIGTERM asks it to finish its job and exit."""
        if self.fleet.supervisor is not None:
            self.fleet.supervisor.remove(child.name)
        if child.popen is not None and child.returncode() is None:
            with contextlib.suppress(ProcessLookupError):
                child.popen.send_signal(signal.SIGTERM)

    def kill_slot(self, child: Child) -> None:
        """Kill a retiring worker that overstayed, with its process group."""
        if child.pid is not None:
            child.killed = True
            signal_group(child.pid, signal.SIGKILL)

    def forget_slot(self, child: Child) -> None:
        """A retired worker has exited: sweep its group and drop it from the fleet."""
        if child.pid is not None:
            sweep_groups([child.pid], SWEEP_TIMEOUT_S)
        with contextlib.suppress(ValueError):
            self.fleet.children.remove(child)


def slot_scaler(fleet: Fleet) -> SlotScaler | None:
    """The scaler of ``fleet``'s solo CPU workers (None: prefork, or autoscaling off)."""
    settings = fleet.settings
    if settings.cpu_pool != "solo" or not load_autoscale_settings().enabled:
        return None
    client = redis.Redis.from_url(
        fleet.resolve().redis_url,
        socket_timeout=SLOT_REDIS_TIMEOUT_S,
        socket_connect_timeout=SLOT_REDIS_TIMEOUT_S,
    )
    cpu = [c for c in fleet.children if c.role == "worker" and c.name.startswith("cpu-worker")]
    autoscale = load_autoscale_settings()
    return SlotScaler(
        group=f"cpu-slots-{os.getpid()}@{socket.gethostname()}",
        queue=Topology.from_settings(settings).cpu_queue,
        host=FleetSlots(fleet),
        registry=SlotRegistry(client),
        members=[(index + 1, child) for index, child in enumerate(cpu)],
        retire_grace_s=settings.hard_time_limit + RETIRE_MARGIN_S,
        max_size=autoscale.cpu_worker_max,
        standby=settings.cpu_standby,
        gate=CpuGate() if settings.cpu_growth_gate and can_measure() else None,
    )
