"""The supervisor's restart policy and loop, with an injected clock and sleep (no processes)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from tenacity import wait_fixed

from taskfleet.fleet import (
    BACKOFF_INITIAL_S,
    BACKOFF_MAX_S,
    GIVE_UP_CRASHES,
    GIVE_UP_WINDOW_S,
    CrashHistory,
    Event,
    FleetError,
    GaveUp,
    RestartFailed,
    RestartPolicy,
    Supervisor,
    describe_exit,
)


class Clock:
    """Monotonic seconds that move only when told (or when the loop 'sleeps')."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakeChild:
    """A supervised thing whose death, restart outcome and readiness the test sets."""

    def __init__(self, name: str, clock: Clock) -> None:
        self.name = name
        self.log_path = Path(f"/nonexistent/{name}.log")
        self.pid: int | None = 100
        self.dead: str | None = None
        self.restart_times: list[float] = []
        self.restart_error: FleetError | None = None
        self.serving = True
        self.runs_jobs = True
        self.standby = False
        self.marked = False
        self.stall: str | None = None
        self.forgiven: list[float] = []
        self.clock = clock

    def exited(self) -> str | None:
        return self.dead

    def restart(self) -> None:
        self.restart_times.append(self.clock())
        if self.restart_error is not None:
            raise self.restart_error
        self.dead = None
        self.pid = (self.pid or 0) + 1

    def came_up(self) -> bool:
        return self.marked

    def ready(self) -> bool:
        return self.serving

    def stalled(self) -> str | None:
        return self.stall

    def forgive(self) -> None:
        self.forgiven.append(self.clock())


def run_for(supervisor: Supervisor, clock: Clock, seconds: float, step: float = 0.25) -> None:
    """Tick the loop every ``step`` fake seconds for ``seconds``."""
    end = clock() + seconds
    while clock() < end:
        supervisor.tick()
        clock.sleep(step)


def test_backoff_doubles_from_the_initial_delay_up_to_the_cap() -> None:
    policy = RestartPolicy(give_up_crashes=100)

    delays = [policy.delay(n) for n in range(1, 9)]

    assert delays[0] == BACKOFF_INITIAL_S
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert max(delays) == BACKOFF_MAX_S
    assert delays == sorted(delays)


def test_backoff_takes_any_tenacity_wait_strategy() -> None:
    assert RestartPolicy(wait=wait_fixed(3)).delay(4) == 3.0


def test_give_up_on_the_nth_crash_within_the_window() -> None:
    clock = Clock()
    history = CrashHistory(RestartPolicy(), clock)

    decisions = []
    for _ in range(GIVE_UP_CRASHES):
        decisions.append(history.record())
        clock.sleep(GIVE_UP_WINDOW_S / GIVE_UP_CRASHES - 1)

    assert [d.give_up for d in decisions] == [False] * (GIVE_UP_CRASHES - 1) + [True]
    assert decisions[-1].crashes_in_window == GIVE_UP_CRASHES


def test_crashes_spread_over_more_than_the_window_never_give_up_and_reset_the_backoff() -> None:
    clock = Clock()
    history = CrashHistory(RestartPolicy(), clock)

    for _ in range(GIVE_UP_CRASHES * 4):
        decision = history.record()
        assert not decision.give_up
        assert decision.delay == BACKOFF_INITIAL_S  # the previous crash left the window
        clock.sleep(GIVE_UP_WINDOW_S + 1)

    assert history.total == GIVE_UP_CRASHES * 4
    assert history.in_window() == 0


def test_a_dead_child_is_restarted_after_the_backoff_and_reported() -> None:
    clock = Clock()
    child, other = FakeChild("cpu-worker", clock), FakeChild("beat", clock)
    events: list[Event] = []
    supervisor = Supervisor([child, other], on_event=events.append, clock=clock, sleep=clock.sleep)

    child.dead = describe_exit(-signal.SIGKILL)
    died_at = clock()
    run_for(supervisor, clock, 5.0)

    assert child.restart_times == [died_at + BACKOFF_INITIAL_S]
    assert other.restart_times == []
    assert [e.kind for e in events] == ["died", "restarted", "ready"]
    died, restarted, ready = events
    assert died.detail == "killed by SIGKILL (9)"
    assert died.seconds == BACKOFF_INITIAL_S
    assert restarted.pid == 101
    assert restarted.restarts == 1
    assert ready.seconds == pytest.approx(BACKOFF_INITIAL_S, abs=0.25)
    assert supervisor.status()["cpu-worker"]["restarts"] == 1
    assert supervisor.status()["cpu-worker"]["last_exit"] == "killed by SIGKILL (9)"


def test_a_child_is_ready_only_once_it_serves() -> None:
    clock = Clock()
    child = FakeChild("io-worker", clock)
    events: list[Event] = []
    supervisor = Supervisor([child], on_event=events.append, clock=clock, sleep=clock.sleep)
    child.dead, child.serving = "exit status 1", False

    run_for(supervisor, clock, 3.0)
    assert supervisor.status()["io-worker"]["state"] == "starting"
    child.serving = True
    run_for(supervisor, clock, 0.5)

    assert events[-1].kind == "ready"
    assert events[-1].seconds == pytest.approx(3.0, abs=0.5)
    assert supervisor.status()["io-worker"]["state"] == "running"


def test_a_child_crashing_in_a_tight_loop_is_given_up_on_by_name() -> None:
    clock = Clock()
    child = FakeChild("cpu-worker", clock)
    child.serving = False  # it never comes up between its crashes
    events: list[Event] = []
    supervisor = Supervisor([child], on_event=events.append, clock=clock, sleep=clock.sleep)

    def crash_forever() -> None:
        for _ in range(1000):
            child.dead = describe_exit(-signal.SIGXCPU)
            supervisor.tick()
            clock.sleep(0.25)

    with pytest.raises(GaveUp) as raised:
        crash_forever()

    assert raised.value.name == "cpu-worker"
    assert raised.value.crashes == GIVE_UP_CRASHES
    assert "SIGXCPU" in str(raised.value)
    assert "cpu-worker" in str(raised.value)
    assert str(child.log_path) in str(raised.value)
    assert len(child.restart_times) == GIVE_UP_CRASHES - 1
    gaps = [b - a for a, b in zip(child.restart_times, child.restart_times[1:], strict=False)]
    assert gaps == sorted(gaps)  # the backoff grows
    assert events[-1].kind == "gave_up"


def test_a_child_that_serves_between_its_crashes_is_never_given_up_on() -> None:
    """A solo worker killed by the jobs it runs (poison pills) comes back every time."""
    clock = Clock()
    child = FakeChild("cpu-worker", clock)
    supervisor = Supervisor([child], clock=clock, sleep=clock.sleep)
    for _ in range(3 * GIVE_UP_CRASHES):
        child.dead = describe_exit(-signal.SIGKILL)
        supervisor.tick()  # it died
        while child.dead is not None:  # restarted after its backoff
            clock.sleep(0.25)
            supervisor.tick()
        supervisor.tick()  # and it answers again
        assert supervisor.status()["cpu-worker"]["state"] == "running"
    assert len(child.restart_times) == 3 * GIVE_UP_CRASHES
    assert supervisor.slots["cpu-worker"].history.in_window() >= GIVE_UP_CRASHES


def test_a_worker_killed_before_a_ping_reached_it_is_not_a_crash_loop_if_it_came_up() -> None:
    """A poison pill redelivered at once kills a fast-starting worker before any ping round
    sees it up: its mark that it came up still spares it; without the mark it counts."""
    clock = Clock()
    child = FakeChild("cpu-worker", clock)
    child.serving = False  # never answers a ping between its deaths
    supervisor = Supervisor([child], clock=clock, sleep=clock.sleep)

    def die_right_after_coming_up(times: int) -> None:
        for _ in range(times):
            child.dead = describe_exit(-signal.SIGKILL)
            supervisor.tick()
            while child.dead is not None:
                clock.sleep(0.25)
                supervisor.tick()

    child.marked = True
    die_right_after_coming_up(3 * GIVE_UP_CRASHES)
    assert len(child.restart_times) == 3 * GIVE_UP_CRASHES
    child.marked = False  # now it dies before coming up: a crash loop
    with pytest.raises(GaveUp):
        die_right_after_coming_up(3 * GIVE_UP_CRASHES)


def test_a_child_that_runs_no_jobs_is_given_up_on_even_if_it_came_up_in_between() -> None:
    """Flower whose port a squatter holds looks up (the port answers), then dies again."""
    clock = Clock()
    child = FakeChild("flower", clock)
    child.runs_jobs = False
    supervisor = Supervisor([child], clock=clock, sleep=clock.sleep)

    def crash_after_coming_up() -> None:
        for _ in range(3 * GIVE_UP_CRASHES):
            child.dead = "exit status 1"
            supervisor.tick()
            while child.dead is not None:
                clock.sleep(0.25)
                supervisor.tick()
            supervisor.tick()

    with pytest.raises(GaveUp):
        crash_after_coming_up()
    assert len(child.restart_times) == GIVE_UP_CRASHES - 1


def test_a_failed_restart_counts_as_a_crash_and_is_retried() -> None:
    clock = Clock()
    redis = FakeChild("redis", clock)
    redis.restart_error = RestartFailed("port busy")
    supervisor = Supervisor([redis], clock=clock, sleep=clock.sleep)
    redis.dead = "process 100 gone"

    run_for(supervisor, clock, 2.0)
    redis.restart_error = None
    run_for(supervisor, clock, 5.0)

    assert len(redis.restart_times) >= 2
    assert redis.dead is None
    assert supervisor.status()["redis"]["crashes_in_window"] >= 2


def test_workers_wait_for_a_service_being_restarted() -> None:
    clock = Clock()
    redis, worker = FakeChild("redis", clock), FakeChild("cpu-worker", clock)
    redis.restart_error = RestartFailed("still down")
    supervisor = Supervisor([redis, worker], clock=clock, sleep=clock.sleep)
    redis.dead = worker.dead = "gone"

    run_for(supervisor, clock, 1.2)
    assert worker.restart_times == []  # its broker is not back yet
    redis.restart_error = None
    run_for(supervisor, clock, 5.0)

    assert worker.restart_times
    assert worker.restart_times[0] >= redis.restart_times[-1]


def test_an_unrecoverable_error_stops_supervision() -> None:
    clock = Clock()
    redis = FakeChild("redis", clock)
    redis.restart_error = FleetError("came back on another port")
    supervisor = Supervisor([redis], clock=clock, sleep=clock.sleep)
    redis.dead = "gone"

    with pytest.raises(FleetError, match="another port"):
        run_for(supervisor, clock, 5.0)


def test_exit_descriptions_name_the_signal() -> None:
    assert describe_exit(3) == "exit status 3"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL (9)"
    assert describe_exit(-signal.SIGXCPU) == "killed by SIGXCPU (24) (CPU time limit)"


def test_a_stalled_child_is_restarted_like_a_dead_one_and_the_others_are_forgiven() -> None:
    clock = Clock()
    child, other = FakeChild("io-worker", clock), FakeChild("beat", clock)
    events: list[Event] = []
    supervisor = Supervisor([child, other], RestartPolicy(), events.append, clock, clock.sleep)
    run_for(supervisor, clock, 2)
    assert events == []

    child.stall = "alive but answered no ping for 60s"
    supervisor.tick()
    child.stall = None  # the restarted one answers
    run_for(supervisor, clock, 2)

    assert [(e.kind, e.name) for e in events] == [
        ("died", "io-worker"),
        ("restarted", "io-worker"),
        ("ready", "io-worker"),
    ]
    assert events[0].detail == "alive but answered no ping for 60s"
    assert supervisor.status()["io-worker"]["last_exit"] == events[0].detail
    assert len(child.restart_times) == 1
    assert other.forgiven == child.restart_times  # its silence counts from the restart


def test_stalls_are_not_judged_while_something_restarts() -> None:
    clock = Clock()
    service, worker = FakeChild("redis", clock), FakeChild("cpu-worker", clock)
    supervisor = Supervisor([service, worker], RestartPolicy(), lambda _e: None, clock, clock.sleep)
    service.dead = "killed by SIGKILL (9)"
    worker.stall = "alive but answered no ping for 60s"
    supervisor.tick()  # the service died: its restart is pending, nothing else is judged
    assert supervisor.status()["cpu-worker"]["restarts"] == 0
    assert supervisor.status()["cpu-worker"]["state"] == "running"
