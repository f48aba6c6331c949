"""The supervisor's slot scaler: grows and retires solo workers to the size asked for."""

from __future__ import annotations

import redis

from taskfleet.fleet.children import Child, RestartFailed
from taskfleet.fleet.scaling import POLL_EVERY_S, SlotScaler
from taskfleet.scheduler.slots import REGISTER_EVERY_S, SlotGroup

GRACE_S = 10.0


class FakeProcess:
    """Stands in for ``subprocess.Popen``: exits when told."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.code: int | None = None

    def poll(self) -> int | None:
        return self.code


class Host:
    """Records what the scaler asks of the fleet."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.standbys: list[int] = []
        self.retired: list[str] = []
        self.killed: list[str] = []
        self.forgotten: list[str] = []
        self.fail_next = False

    def start_slot(self, index: int, standby_for: str | None = None) -> Child:
        if self.fail_next:
            self.fail_next = False
            raise RestartFailed("no fork today")
        if standby_for is not None:
            assert standby_for == "g"
            self.standbys.append(index)
        else:
            self.started.append(index)
        return child(index)

    def retire_slot(self, member: Child) -> None:
        self.retired.append(member.name)

    def kill_slot(self, member: Child) -> None:
        self.killed.append(member.name)

    def forget_slot(self, member: Child) -> None:
        self.forgotten.append(member.name)


class Registry:
    """The slot keys, in memory; ``down`` makes every call fail as Redis would."""

    def __init__(self) -> None:
        self.targets: dict[str, int] = {}
        self.groups: list[SlotGroup] = []
        self.down = False
        self.unregistered: list[str] = []

    def target(self, group: str) -> int | None:
        if self.down:
            raise redis.ConnectionError("down")
        return self.targets.get(group)

    def register(self, group: SlotGroup) -> None:
        if self.down:
            raise redis.ConnectionError("down")
        self.groups.append(group)

    def unregister(self, group: str) -> None:
        self.unregistered.append(group)

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def child(index: int) -> Child:
    name = "cpu-worker" if index == 1 else f"cpu-worker-{index}"
    node = "cpu" if index == 1 else f"cpu{index}"
    member = Child(name, "worker", [], None, "", nodename=f"{node}-1@h", pool="solo")  # type: ignore[arg-type]
    member.popen = FakeProcess(1000 + index)  # type: ignore[assignment]
    return member


def scaler(
    size: int = 1, standby: bool = False, max_size: int = 8
) -> tuple[SlotScaler, Host, Registry, Clock]:
    host, registry, clock = Host(), Registry(), Clock()
    members = [(i, child(i)) for i in range(1, size + 1)]
    made = SlotScaler(
        "g",
        "cpu",
        host,  # type: ignore[arg-type]
        registry,  # type: ignore[arg-type]
        members,
        GRACE_S,
        max_size=max_size,
        standby=standby,
        clock=clock,
        wall=lambda: 5.0,
    )
    return made, host, registry, clock


def test_it_registers_its_workers_and_grows_to_the_size_asked_for() -> None:
    made, host, registry, clock = scaler()
    made.step()
    assert [(g.size, g.nodes) for g in registry.groups] == [(1, ("cpu-1@h",))]
    registry.targets["g"] = 3
    clock.now += POLL_EVERY_S
    made.step()
    assert host.started == [2, 3]
    assert made.size == 3
    assert registry.groups[-1].size == 3
    assert registry.groups[-1].nodes == ("cpu-1@h", "cpu2-1@h", "cpu3-1@h")


def test_it_reads_the_target_only_every_poll_interval() -> None:
    made, host, registry, clock = scaler()
    made.step()
    registry.targets["g"] = 2
    clock.now += POLL_EVERY_S / 2
    made.step()
    assert host.started == []
    clock.now += POLL_EVERY_S / 2
    made.step()
    assert host.started == [2]


def test_shrinking_retires_the_newest_and_never_the_first() -> None:
    made, host, registry, _ = scaler(3)
    registry.targets["g"] = 0  # below the minimum: the persister's worker stays
    made.step()
    assert host.retired == ["cpu-worker-3", "cpu-worker-2"]
    assert made.size == 1
    assert registry.groups[-1].size == 1


def test_a_retired_worker_is_forgotten_once_it_exits_and_killed_after_the_grace() -> None:
    made, host, registry, clock = scaler(3)
    registry.targets["g"] = 1
    made.step()
    first, second = made.retiring[0].child, made.retiring[1].child
    first.popen.code = 0  # type: ignore[union-attr]  # finished its job and exited
    clock.now += 1
    made.step()
    assert host.forgotten == ["cpu-worker-3"]
    assert host.killed == []
    clock.now += GRACE_S
    made.step()
    assert host.killed == ["cpu-worker-2"]
    clock.now += 1
    made.step()
    assert host.killed == ["cpu-worker-2"]  # killed once
    second.popen.code = -9  # type: ignore[union-attr]
    made.step()
    assert host.forgotten == ["cpu-worker-3", "cpu-worker-2"]
    assert made.retiring == []


def test_a_failed_launch_is_tried_again_next_round() -> None:
    made, host, registry, clock = scaler()
    registry.targets["g"] = 2
    host.fail_next = True
    made.step()
    assert made.size == 1
    clock.now += POLL_EVERY_S
    made.step()
    assert made.size == 2


def test_redis_down_keeps_the_size_and_the_next_round_tries_again() -> None:
    made, host, registry, clock = scaler(2)
    registry.down = True
    made.step()
    assert made.size == 2
    assert (host.retired, host.started) == ([], [])
    registry.down = False
    registry.targets["g"] = 3
    clock.now += POLL_EVERY_S
    made.step()
    assert made.size == 3


def test_an_unchanged_group_registers_again_every_interval() -> None:
    made, _, registry, clock = scaler()
    made.step()
    clock.now += POLL_EVERY_S
    made.step()
    assert len(registry.groups) == 1
    clock.now += REGISTER_EVERY_S
    made.step()
    assert len(registry.groups) == 2


def test_closing_unregisters_the_group() -> None:
    made, _, registry, _ = scaler()
    made.close()
    assert registry.unregistered == ["g"]


def test_a_standby_is_kept_booted_and_promoted_first_by_registering_it() -> None:
    made, host, registry, clock = scaler(standby=True, max_size=4)
    made.step()
    assert (host.standbys, host.started) == ([2], [])
    assert registry.groups[-1].nodes == ("cpu-1@h",)  # a standby is no member
    registry.targets["g"] = 3
    clock.now += POLL_EVERY_S
    made.step()
    # The standby became worker 2 (registered: it takes the queue itself); 3 was started
    # cold; a new standby takes the lowest free number.
    assert host.started == [3]
    assert host.standbys == [2, 4]
    assert made.promotions == 1
    assert registry.groups[-1].nodes == ("cpu-1@h", "cpu2-1@h", "cpu3-1@h")


def test_no_standby_at_the_maximum_and_none_when_switched_off() -> None:
    made, host, registry, clock = scaler(standby=True, max_size=2)
    made.step()
    registry.targets["g"] = 2
    clock.now += POLL_EVERY_S
    made.step()
    assert (made.size, host.standbys, host.started) == (2, [2], [])
    clock.now += POLL_EVERY_S
    made.step()
    assert host.standbys == [2]  # at the maximum: no new one
    off, off_host, off_registry, off_clock = scaler(standby=False)
    off.step()
    off_registry.targets["g"] = 2
    off_clock.now += POLL_EVERY_S
    off.step()
    assert (off_host.standbys, off_host.started) == ([], [2])


def test_a_retiring_workers_number_is_not_reused_while_it_runs() -> None:
    made, host, registry, clock = scaler(3)
    registry.targets["g"] = 2
    made.step()
    assert host.retired == ["cpu-worker-3"]  # still finishing its job
    registry.targets["g"] = 3
    clock.now += POLL_EVERY_S
    made.step()
    assert host.started == [4]  # cpu3-... is still a live node name
    made.retiring[0].child.popen.code = 0  # type: ignore[union-attr]
    registry.targets["g"] = 4
    clock.now += POLL_EVERY_S
    made.step()
    assert host.started == [4, 3]


def test_a_standby_that_cannot_start_is_tried_again() -> None:
    made, host, _, clock = scaler(standby=True)
    host.fail_next = True
    made.step()
    assert made.standby is None
    clock.now += POLL_EVERY_S
    made.step()
    assert host.standbys == [2]


class Gate:
    """Stands in for :class:`taskfleet.fleet.cpu_gate.CpuGate`: a fixed answer beyond
    ``cores``, and the pids it was shown."""

    def __init__(self, cores: int, computing: bool) -> None:
        self.cores = cores
        self.computing = computing
        self.sampled: list[list[int]] = []

    def sample(self, pids: list[int]) -> None:
        self.sampled.append(list(pids))

    def allows_growth(self, size: int, pids: list[int]) -> bool:
        return size < self.cores or not self.computing


def test_beyond_the_cores_computing_workers_hold_the_grow_and_the_standby() -> None:
    made, host, registry, clock = scaler(standby=True, max_size=4)
    made.gate = Gate(cores=2, computing=True)  # type: ignore[assignment]
    made.step()
    assert host.standbys == [2]  # below the cores: booted at once
    registry.targets["g"] = 4
    clock.now += POLL_EVERY_S
    made.step()
    # The standby is promoted (booted already); nothing new boots while the two compute.
    assert (made.size, host.started, host.standbys, made.held_back) == (2, [], [2], 1)
    for _ in range(3):
        clock.now += POLL_EVERY_S
        made.step()
    assert (made.size, host.started, made.held_back) == (2, [], 1)  # one hold, logged once
    assert made.gate.sampled[-1] == [1001, 1002]  # type: ignore[union-attr]
    made.gate.computing = False  # type: ignore[union-attr]
    clock.now += POLL_EVERY_S
    made.step()
    assert (made.size, host.started) == (4, [3, 4])
    assert host.standbys == [2]  # at the maximum: none
