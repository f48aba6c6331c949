"""Worker groups without Redis: settings, queues, worker profiles and the router's choices."""

from __future__ import annotations

import ast
import subprocess
import sys
import time

import pytest
from celery import Celery

from taskfleet.config import ConfigError, load_settings
from taskfleet.config.groups import GroupSettings, get_group_settings, load_group_settings
from taskfleet.group_sweep import sweep
from taskfleet.routing.group_reading import GroupReading
from taskfleet.routing.groups import GroupRouter
from taskfleet.routing.owners import consumers_key
from taskfleet.routing.topology import Topology
from taskfleet.sidecar import Sidecar
from taskfleet.workers.heartbeat import sidecar_config
from taskfleet.workers.profiles import cpu_profile, io_profile, pool_queues

GROUPS = ["eu", "us", "ap"]
LIVE_TTL_S = 3.0
MAX_AGE_S = 10.0
#: Affinity keys enough to land on every group of three.
AFFINITY_KEYS = 40


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def router(readings: dict[str, GroupReading], **overrides: object) -> GroupRouter:
    """A router whose readings are ``readings`` (no Redis), on the ``cpu`` queue."""
    settings = GroupSettings(worker_groups=GROUPS, group_max_age=MAX_AGE_S, **overrides)  # type: ignore[arg-type]
    result = GroupRouter(None, ["cpu"], settings, live_ttl=LIVE_TTL_S)
    result._readings = readings
    return result


def live(backlog: int = 0, age: float = 0.0) -> GroupReading:
    return GroupReading(backlog, age, 1)


DEAD = GroupReading(0, 0.0, 0)


def test_unset_means_no_group_and_todays_queues(clean_env: None) -> None:
    groups = load_group_settings()
    assert not groups.enabled
    topology = Topology.from_settings(load_settings())
    assert topology.groups == ()
    assert [q.name for q in topology.all_queues()] == [
        "cpu",
        "io",
        "cpu.dlq",
        "io.dlq",
        "cpu.standby",
        "celery",
    ]
    assert pool_queues(topology, "cpu", None) == ("cpu",)


def test_groups_declare_their_queues_dead_lettering_into_the_pools(clean_env: None) -> None:
    settings = load_settings(broker_url="amqp://guest@127.0.0.1//", redis_url="redis://x")
    topology = Topology.from_settings(settings, ("eu", "us"))
    names = [q.name for q in topology.all_queues()]
    assert {"cpu@eu", "cpu@us", "io@eu", "io@us"} <= set(names)
    eu = topology.work_queue("cpu", "eu")
    assert eu.queue_arguments["x-dead-letter-routing-key"] == "cpu.dlq"
    assert pool_queues(topology, "io", "eu") == ("io@eu", "io")


def test_a_worker_group_or_preference_must_be_declared(clean_env: None) -> None:
    with pytest.raises(ConfigError, match="TASKFLEET_WORKER_GROUP"):
        load_group_settings(worker_groups=["eu"], worker_group="us")
    with pytest.raises(ConfigError, match="TASKFLEET_GROUP_PREFERRED"):
        load_group_settings(worker_groups=["eu"], group_preferred="us")
    with pytest.raises(ConfigError, match="TASKFLEET_WORKER_GROUPS"):
        load_group_settings(worker_groups=["e u"])


def test_a_client_default_group_must_be_declared() -> None:
    from taskfleet.client import Client

    # Checked before the client resolves or connects to any service.
    with pytest.raises(ValueError, match="not in TASKFLEET_WORKER_GROUPS"):
        Client(group="eu", groups=GroupSettings())
    with pytest.raises(ValueError, match="not in TASKFLEET_WORKER_GROUPS"):
        Client(group="mars", groups=GroupSettings(worker_groups=["eu"]))


def test_preference_is_kept_while_its_group_is_healthy() -> None:
    readings = {"cpu@eu": live(100), "cpu@us": live(0), "cpu@ap": live(0)}
    assert router(readings).route("cpu", "eu") == "cpu@eu"
    assert router(readings, group_preferred="ap").route("cpu") == "cpu@ap"
    with pytest.raises(ValueError, match="unknown worker group"):
        router(readings).route("cpu", "mars")


def test_no_preference_goes_to_the_least_backlog() -> None:
    readings = {"cpu@eu": live(5), "cpu@us": live(2), "cpu@ap": live(9)}
    assert router(readings).route("cpu") == "cpu@us"


def test_a_group_without_live_consumer_or_with_too_old_a_head_fails_over() -> None:
    dead = {"cpu@eu": DEAD, "cpu@us": live(7), "cpu@ap": live(3)}
    assert router(dead).route("cpu", "eu") == "cpu@ap"
    stale = {"cpu@eu": live(0, MAX_AGE_S + 1), "cpu@us": live(7), "cpu@ap": live(8)}
    assert router(stale).route("cpu", "eu") == "cpu@us"


def test_with_no_healthy_group_jobs_wait_where_asked_or_least_backlogged() -> None:
    readings = {"cpu@eu": DEAD, "cpu@us": GroupReading(1, 0.0, 0), "cpu@ap": DEAD}
    assert router(readings).route("cpu", "us") == "cpu@us"
    assert router(readings).route("cpu") == "cpu@eu"


def test_affinity_is_sticky_and_moves_only_the_keys_of_a_dead_group() -> None:
    healthy = {"cpu@eu": live(), "cpu@us": live(), "cpu@ap": live(9)}
    keys = [f"customer-{i}" for i in range(AFFINITY_KEYS)]
    before = {key: router(healthy).route("cpu", affinity=key) for key in keys}
    assert set(before.values()) == {"cpu@eu", "cpu@us", "cpu@ap"}  # not by backlog
    assert before == {key: router(healthy).route("cpu", affinity=key) for key in keys}
    after = {key: router({**healthy, "cpu@us": DEAD}).route("cpu", affinity=key) for key in keys}
    assert all(after[k] == before[k] for k in keys if before[k] != "cpu@us")
    assert "cpu@us" not in after.values()


def test_place_routes_a_batch_per_pool_queue() -> None:
    queues = ["cpu", "cpu", "io"]
    settings = GroupSettings(worker_groups=["eu"])
    GroupRouter(None, ["cpu", "io"], settings, live_ttl=LIVE_TTL_S).place(queues, None, None)
    assert queues == ["cpu@eu", "cpu@eu", "io@eu"]


def test_readings_are_cached_for_the_refresh_interval() -> None:
    clock = Clock()
    settings = GroupSettings(worker_groups=GROUPS, group_refresh_ms=250)
    reads: list[float] = []
    result = GroupRouter(None, ["cpu"], settings, live_ttl=LIVE_TTL_S, clock=clock)
    result.client = object()  # type: ignore[assignment]  # any client: _read is replaced

    def read(now: float) -> dict[str, GroupReading]:
        reads.append(now)
        return {}

    result._read = read  # type: ignore[method-assign]
    for _ in range(100):
        result.route("cpu")
    clock.now += 0.3
    result.route("cpu")
    assert reads == [1000.0, 1000.3]


class Recorder:
    """A Redis stand-in that records the sidecar's commands and answers each with 1."""

    def __init__(self) -> None:
        self.commands: list[list[object]] = []

    def execute(self, commands: list[list[object]]) -> list[object]:
        self.commands += commands
        return [1] * len(commands)


def test_the_sidecar_records_the_queues_its_worker_consumes_until_it_exits() -> None:
    app = Celery("t", broker="redis://127.0.0.1:1/0")
    config = sidecar_config(app, "me", 2.0, 8.0, 1.5, ["cpu@eu", "cpu"])
    assert config["consumer_keys"] == [consumers_key("cpu@eu"), consumers_key("cpu")]
    redis = Recorder()
    sidecar = Sidecar(config, redis)  # type: ignore[arg-type]
    sidecar.beat()
    zadds = {c[1] for c in redis.commands if c[0] == "ZADD" and c[3] == "me"}
    assert set(config["consumer_keys"]) <= zadds
    sidecar.start_reclaim = lambda owner=None, release_lock=False: None  # type: ignore[method-assign]
    beaten = len(redis.commands)
    sidecar.on_parent_exit()
    gone = [c for c in redis.commands[beaten:] if c[0] == "ZADD"]
    assert [c[1] for c in gone] == config["consumer_keys"]
    assert all(float(str(c[2])) <= time.time() - config["ttl"] for c in gone)  # not live


def test_the_sidecar_still_imports_only_the_standard_library() -> None:
    probe = "import sys, taskfleet.sidecar; print(sorted(m for m in sys.modules if '.' not in m))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    third_party = {"kombu", "redis", "pydantic", "celery", "uhashring"}
    assert not third_party & set(ast.literal_eval(out.stdout))


def test_a_worker_given_a_group_consumes_its_queue_first(
    clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKFLEET_WORKER_GROUPS", '["eu","us"]')
    monkeypatch.setenv("TASKFLEET_WORKER_GROUP", "eu")
    get_group_settings.cache_clear()
    try:
        settings = load_settings()
        assert cpu_profile(settings).queues == ("cpu@eu", "cpu")
        assert io_profile(settings).queues == ("io@eu", "io", "celery")
    finally:
        get_group_settings.cache_clear()


class FakeBroker:
    """Consumers' last beats and list lengths, answering the sweep's commands."""

    def __init__(self, beats: dict[str, float], sizes: dict[str, int]) -> None:
        self.beats, self.sizes = beats, sizes
        self.moves: list[tuple[str, str]] = []

    def execute(self, *commands: list[object]) -> list[object]:
        replies: list[object] = []
        for name, *args in commands:
            if name == "ZCOUNT":
                beat = self.beats.get(str(args[0]))
                replies.append(int(beat is not None and beat >= float(str(args[1]))))
            elif name == "LLEN":
                replies.append(self.sizes.get(str(args[0]), 0))
            else:  # EVAL of the move: first source sub-list to first destination one
                steps = int(str(args[-2]))
                self.moves.append((str(args[2]), str(args[2 + steps])))
                replies.append(self.sizes.get(str(args[2]), 0))
        return replies


def sweep_pools() -> list[list[dict[str, object]]]:
    return [[{"consumers": f"c:{g}", "lists": [f"cpu@{g}"]} for g in GROUPS]]


@pytest.mark.parametrize(
    ("eu_last_beat_ttls_ago", "moved"),
    [(0.5, []), (1.5, []), (2.5, [("cpu@eu", "cpu@ap")])],  # live, restarting, dead
)
def test_the_sweep_moves_a_dead_groups_jobs_to_the_least_backlogged_live_one(
    eu_last_beat_ttls_ago: float, moved: list[tuple[str, str]]
) -> None:
    now, ttl = 1000.0, LIVE_TTL_S
    beats = {"c:eu": now - eu_last_beat_ttls_ago * ttl, "c:us": now, "c:ap": now}
    broker = FakeBroker(beats, {"cpu@eu": 4, "cpu@us": 9, "cpu@ap": 1})
    count = sweep(broker.execute, sweep_pools(), now, ttl)
    assert broker.moves == moved
    assert count == (4 if moved else 0)


def test_the_amqp_sweep_is_scheduled_only_for_groups_on_rabbitmq() -> None:
    from taskfleet.config import load_settings
    from taskfleet.config.resilience import load_resilience_settings
    from taskfleet.routing.sweep_schedule import GROUP_SWEEP_TASK, group_sweep_schedule

    services = {
        "redis_url": "redis://127.0.0.1:1/0",
        "database_url": "postgresql://x@127.0.0.1:1/x",
    }
    amqp = load_settings(broker_url="amqp://guest:guest@127.0.0.1:1//", **services)
    on_redis = load_settings(broker_url="redis://127.0.0.1:1/0", **services)
    groups = GroupSettings(worker_groups=["eu", "us"])
    resilience = load_resilience_settings(reclaim_interval=1.5)
    [entry] = group_sweep_schedule(amqp, groups, resilience).values()
    assert entry["task"] == GROUP_SWEEP_TASK
    assert entry["schedule"] == 1.5
    assert entry["options"]["expires"] == 1.5
    assert group_sweep_schedule(on_redis, groups, resilience) == {}  # the sidecars sweep
    assert group_sweep_schedule(amqp, GroupSettings(), resilience) == {}
