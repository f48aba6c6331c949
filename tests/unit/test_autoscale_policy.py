"""The autoscaling policy on recorded depth traces (pure: no services, no clock)."""

from __future__ import annotations

import pytest

from taskfleet.config import ConfigError
from taskfleet.config.autoscale import PoolLimits, load_autoscale_settings
from taskfleet.scheduler.model import Decision, PoolMemory, PoolSample, TrendPoint, WorkerView
from taskfleet.scheduler.policy import apply_hysteresis, decide, predicted_need, spread

LIMITS = PoolLimits(
    worker_min=1, worker_max=4, pool_min=1, pool_max=4, step_up=4, step_down=1, target_backlog=4
)
INTERVAL = 1.0
UP_COOLDOWN = 2.0
DOWN_COOLDOWN = 5.0

#: Depth of the cpu queue, one reading per 1 s tick: idle, a 2,000-job burst draining, idle.
BURST_TRACE = [0, 0, 2000, 1930, 1700, 1400, 1050, 700, 350, 40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]


def _sample(at: float, depth: int, sizes: dict[str, int], **rates: float) -> PoolSample:
    workers = tuple(WorkerView(h, c, pid=1) for h, c in sorted(sizes.items()))
    return PoolSample(
        "cpu",
        at,
        depth,
        rates.get("in_flight", 0),  # type: ignore[arg-type]
        rates.get("arrival", 0.0),
        rates.get("completion", 0.0),
        workers,
    )


def _decide(sample: PoolSample, memory: PoolMemory, limits: PoolLimits = LIMITS) -> Decision:
    return decide(
        sample,
        memory,
        limits,
        hysteresis=0.2,
        up_cooldown=UP_COOLDOWN,
        down_cooldown=DOWN_COOLDOWN,
        horizon=2.0,
    )


def replay(trace: list[int], sizes: dict[str, int], limits: PoolLimits = LIMITS) -> list[Decision]:
    """Feed a depth trace tick by tick, applying each decision like the tick does."""
    memory = PoolMemory()
    decisions = []
    for index, depth in enumerate(trace):
        now = index * INTERVAL
        decision = _decide(_sample(now, depth, sizes), memory, limits)
        for host, delta in decision.changes.items():
            sizes[host] += delta
        if decision.action == "grow":
            memory.last_up_at = now
        elif decision.action == "shrink":
            memory.last_down_at = now
        memory.trend.append(TrendPoint(now, depth, 0.0))
        memory.trend = memory.trend[-6:]
        decisions.append(decision)
    return decisions


def test_burst_grows_from_min_to_max_in_one_tick_then_returns_to_min_after_cooldown() -> None:
    decisions = replay(BURST_TRACE, {"cpu-a@h": 1})
    sizes = [d.target for d in decisions]
    assert sizes[:2] == [1, 1]
    assert sizes[2] == 4, decisions[2]
    assert decisions[2].action == "grow"
    assert "bounded to 4" in decisions[2].reason
    assert max(sizes) == 4
    first_idle = BURST_TRACE.index(0, 2)
    # No shrink within the down cooldown after the last change, then one step per tick.
    shrinks = [i for i, d in enumerate(decisions) if d.action == "shrink"]
    assert shrinks
    assert shrinks[0] >= 2 + DOWN_COOLDOWN
    assert all(decisions[i].current - decisions[i].target == 1 for i in shrinks)
    assert sizes[-1] == 1
    assert first_idle < len(sizes)


def test_never_above_max_or_below_min_across_two_workers() -> None:
    limits = PoolLimits(1, 3, 2, 5, 4, 2, 4)
    decisions = replay(BURST_TRACE, {"cpu-a@h": 1, "cpu-b@h": 1}, limits)
    for d in decisions:
        assert limits.pool_min <= d.target <= limits.pool_max
    assert decisions[2].target == 5
    assert sorted(decisions[2].changes.values()) == [1, 2]  # spread evenly: 3 + 2


def test_hysteresis_holds_a_load_near_the_boundary() -> None:
    # 4 processes, backlog 13 needs ceil(13/4) = 4; 11 needs 3, but with a 20% band
    # ceil(11/3.2) = 4: hold. Only a clearly lower load (9 -> ceil(9/3.2) = 3) shrinks.
    assert apply_hysteresis(3, 4, 11, LIMITS, 0.2) == 4
    assert apply_hysteresis(3, 4, 9, LIMITS, 0.2) == 3
    memory = PoolMemory()
    flapping = [_decide(_sample(100.0 + t, 11 + (t % 2) * 2, {"w@h": 4}), memory) for t in range(6)]
    assert {d.action for d in flapping} == {"hold"}


def test_predictive_part_grows_before_the_backlog_alone_would() -> None:
    # Depth rising 6/s: backlog 6 alone needs 2; the trend projects 6 + 12 = 18 -> 5 (max 4).
    trend = [TrendPoint(t, int(t * 6), 0.0) for t in range(0, 4)]
    sample = _sample(4.0, 24 - 18, {"w@h": 1})
    need, why = predicted_need(sample, trend, LIMITS, 2.0)
    assert need > 2
    assert "trend" in why
    decision = _decide(sample, PoolMemory(trend=trend))
    assert decision.action == "grow"
    assert decision.target > 2
    assert decision.reason.startswith("predictive")


def test_arrival_rate_above_completion_rate_scales_up_with_an_empty_queue() -> None:
    sample = _sample(10.0, 0, {"w@h": 1}, arrival=300.0, completion=100.0, in_flight=1)
    decision = _decide(sample, PoolMemory())
    assert decision.target == 3
    assert "arrivals 300.0/s" in decision.reason


def test_cooldown_after_growth_holds_a_second_growth() -> None:
    memory = PoolMemory(last_up_at=9.5)
    decision = _decide(_sample(10.0, 100, {"w@h": 2}), memory)
    assert decision.action == "hold"
    assert "scale-up cooldown" in decision.reason


def test_no_worker_answered_means_no_action_but_a_replica_figure() -> None:
    decision = _decide(_sample(1.0, 100, {}), PoolMemory())
    assert decision.action == "hold"
    assert decision.changes == {}
    assert decision.desired_replicas == 7  # ceil(ceil(100/4) / 4)


def test_spread_respects_worker_max_and_step() -> None:
    workers = (WorkerView("a", 4), WorkerView("b", 1), WorkerView("c", 2))
    assert spread(workers, 5, LIMITS) == {"b": 3, "c": 2}
    assert spread(workers, -3, LIMITS) == {"a": -1, "c": -1}  # step_down 1 per worker


def test_spread_leaves_workers_that_cannot_be_resized() -> None:
    workers = (WorkerView("solo", 1, resizable=False), WorkerView("b", 1), WorkerView("c", 2))
    assert spread(workers, 3, LIMITS) == {"b": 2, "c": 1}
    assert spread((WorkerView("solo", 1, resizable=False),), 2, LIMITS) == {}


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        (
            {"TASKFLEET_AUTOSCALE_CPU_WORKER_MIN": "5", "TASKFLEET_AUTOSCALE_CPU_WORKER_MAX": "4"},
            "TASKFLEET_AUTOSCALE_CPU_WORKER_MIN",
        ),
        (
            {"TASKFLEET_AUTOSCALE_IO_POOL_MIN": "50", "TASKFLEET_AUTOSCALE_IO_POOL_MAX": "20"},
            "TASKFLEET_AUTOSCALE_IO_POOL_MIN",
        ),
        ({"TASKFLEET_AUTOSCALE_CPU_STEP_UP": "0"}, "TASKFLEET_AUTOSCALE_CPU_STEP_UP"),
        ({"TASKFLEET_AUTOSCALE_IO_STEP_DOWN": "0"}, "TASKFLEET_AUTOSCALE_IO_STEP_DOWN"),
        ({"TASKFLEET_AUTOSCALE_INTERVAL": "0"}, "TASKFLEET_AUTOSCALE_INTERVAL"),
    ],
)
def test_bad_settings_fail_at_start_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], variable: str
) -> None:
    monkeypatch.chdir("/")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=variable):
        load_autoscale_settings()


def test_default_settings_are_valid_and_tick_every_five_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir("/")
    from taskfleet.scheduler.schedule import autoscale_schedule

    settings = load_autoscale_settings()
    assert settings.interval == 5.0
    entry = autoscale_schedule(settings)["taskfleet-autoscale"]
    assert entry["task"] == "scheduler.autoscale_tick"
    assert entry["schedule"] == 5.0
    assert autoscale_schedule(load_autoscale_settings(enabled=False)) == {}
