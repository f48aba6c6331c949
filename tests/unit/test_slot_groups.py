"""The autoscaler's view of slot groups: solo workers a supervisor resizes, as one worker."""

from __future__ import annotations

from typing import Any

from taskfleet.config.autoscale import PoolLimits
from taskfleet.scheduler.actuate import resize_worker
from taskfleet.scheduler.measure import WorkerReport, sample_pool, worker_views
from taskfleet.scheduler.model import WorkerView
from taskfleet.scheduler.policy import spread
from taskfleet.scheduler.slots import MAX_SLOTS, SlotGroup, node_groups

SOLO = "celery.concurrency.solo:TaskPool"
PREFORK = "celery.concurrency.prefork:TaskPool"
LIMITS = PoolLimits(1, 4, 1, 64, 4, 1, 4.0)


def report(host: str, implementation: str, size: int = 1, pid: int = 7) -> WorkerReport:
    stats = {"pid": pid, "pool": {"implementation": implementation, "max-concurrency": size}}
    return WorkerReport(host, frozenset({"cpu"}), stats, 0, 0)


def group(size: int, *nodes: str) -> SlotGroup:
    return SlotGroup("slots-1@h", "cpu", size, nodes, 0.0)


def test_the_solo_workers_of_a_group_count_as_one_resizable_worker_of_its_size() -> None:
    members = [report("cpu-1@h", SOLO), report("cpu2-1@h", SOLO), report("other@h", PREFORK, 3)]
    groups = node_groups({"slots-1@h": group(3, "cpu-1@h", "cpu2-1@h", "cpu3-1@h")}, "cpu")
    views = worker_views(members, {}, groups)
    # cpu3 has not answered (busy, or starting): the group's size, not the answers, counts.
    assert views == (
        WorkerView("other@h", 3, 7, True, True),
        WorkerView("slots-1@h", 3, 0, False, True, slots=True),
    )


def test_a_group_whose_workers_are_all_busy_is_still_seen_and_its_jobs_in_flight() -> None:
    groups = node_groups({"slots-1@h": group(2, "cpu-1@h", "cpu2-1@h")}, "cpu")
    sample, _ = sample_pool("cpu", 10.0, 5, [], {}, None, groups=groups)
    assert sample.workers == (WorkerView("slots-1@h", 2, 0, False, True, slots=True),)
    assert (sample.depth, sample.in_flight, sample.backlog) == (5, 2, 7)


def test_a_solo_worker_of_no_group_stays_as_it_is_and_is_not_resized() -> None:
    views = worker_views([report("lone@h", SOLO)], {}, {})
    assert views == (WorkerView("lone@h", 1, 7, False, False),)
    assert spread(views, 2, LIMITS) == {}


def test_a_group_on_another_queue_is_another_fleets() -> None:
    other = SlotGroup("g", "cpu-other", 2, ("cpu-1@h",), 0.0)
    assert node_groups({"g": other}, "cpu") == {}


def test_the_policy_spreads_growth_onto_a_group_within_its_bounds() -> None:
    views = (WorkerView("slots-1@h", 2, 0, False, True, slots=True),)
    assert spread(views, 5, LIMITS) == {"slots-1@h": 2}  # worker_max 4


class Registry:
    def __init__(self) -> None:
        self.targets: dict[str, int] = {}

    def set_target(self, group: str, size: int) -> None:
        self.targets[group] = size


def test_resizing_a_group_asks_its_supervisor_for_the_new_size() -> None:
    registry = Registry()
    view = WorkerView("slots-1@h", 2, 0, False, True, slots=True)
    app: Any = None  # no remote control is sent to a group
    assert resize_worker(app, view, 2, 1.0, registry) == (2, "ok")  # type: ignore[arg-type]
    assert registry.targets == {"slots-1@h": 4}
    assert resize_worker(app, view, -1, 1.0, registry) == (-1, "ok")  # type: ignore[arg-type]
    assert registry.targets == {"slots-1@h": 1}


def test_a_stored_group_round_trips_and_garbage_is_no_group() -> None:
    stored = group(2, "a@h", "b@h")
    assert SlotGroup.from_json(stored.group, stored.to_json()) == stored
    assert SlotGroup.from_json("x", b"not json") is None
    assert SlotGroup.from_json("x", '{"pool": "cpu"}') is None
    assert MAX_SLOTS >= 64
