"""``taskfleet up`` keeps its fleet running: real processes, a fresh embedded stack per fleet.

``taskfleet up`` runs as a subprocess, exactly as an operator runs it, in its own data
folder (its own embedded Redis and PostgreSQL) with Flower on a free port. The tests kill
its children the way the issue did (SIGKILL of a worker's whole process tree, SIGKILL of
the embedded Redis) and wait, with deadlines, for the fleet to be whole again.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import pytest
import redis
from celery import Celery
from kombu.exceptions import OperationalError

from taskfleet.app import create_app
from taskfleet.client import Client
from taskfleet.config import load_settings
from taskfleet.config.app_settings import settings_of
from taskfleet.devstack import EmbeddedStack
from taskfleet.fleet import GIVE_UP_CRASHES, read_status
from taskfleet.resilience.diag_keys import counter_key, gate_key
from taskfleet.resilience.dlq import DeadLetterQueues
from taskfleet.routing.depth import redis_priority_keys
from taskfleet.scheduler.store import AutoscaleStore
from tests.support.up_exposure import CHILDREN as EXPOSURE_CHILDREN
from tests.support.up_exposure import (
    answering_flower,
    assert_flower_listens_on_loopback_only,
    assert_flower_pages_need_credentials,
    assert_no_secret_on_command_lines,
)
from tests.support.waiting import wait_for
from tests.support.workers import kill_tree

CLI = [sys.executable, "-m", "taskfleet.cli"]
#: Starting a fresh embedded stack (initdb) and the workers.
UP_READY_TIMEOUT_S = 120
#: Generous bounds: they tell a restart from none on any machine (the time is printed).
RECOVERY_TIMEOUT_S = 60
JOB_TIMEOUT_S = 90
#: The first restart delay (0.1, 0.2, 0.4, 0.8 s): the tests wait on restarts, not backoff.
RESTART_BACKOFF_S = 0.1
#: Long enough for GIVE_UP_CRASHES restarts with their backoff and starts.
GIVE_UP_TIMEOUT_S = 120
STOP_TIMEOUT_S = 60
#: A worker answering no ping this long is restarted (the default is 60 s).
WORKER_SILENCE_S = 8
PING_TIMEOUT_S = 0.5
#: The children of `taskfleet up`: CPU and I/O workers, beat, Flower, the metrics endpoint.
UP_CHILDREN = 5
JOBS_ACROSS_REDIS_KILL = 50
#: Deliveries of a poison pill before it is dead-lettered (the default).
MAX_DELIVERIES = 3
#: The most CPU worker processes the autoscaler may ask of up.
AUTOSCALE_MAX = 3
#: Seconds between two autoscaler ticks of the fleet under test.
AUTOSCALE_INTERVAL_S = 1.0
#: Held jobs: a backlog that calls for AUTOSCALE_MAX processes (4 jobs each) and more.
BURST_JOBS = 16
CPU_QUEUE = "cpu"
#: What a control call raises while its broker connection is stale or down.
BROKER_ERRORS = (redis.ConnectionError, OperationalError)
#: A small fleet; the stack is kept on exit so a test can read results after a SIGTERM.
UP_ARGS = ["--cpu-concurrency", "1", "--io-concurrency", "4", "--stop-timeout", "20"]
UP_ARGS += ["--keep-services"]


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Up:
    """A running ``taskfleet up`` and what the tests need to reach its fleet."""

    proc: subprocess.Popen[str]
    data_dir: Path
    output: Path
    flower_port: int
    app: Celery
    redis_url: str

    def text(self) -> str:
        """Everything it printed so far."""
        return self.output.read_text(errors="replace")

    def children(self) -> dict[str, dict[str, Any]]:
        """The supervisor's status of each child."""
        doc = read_status(self.data_dir)
        return dict(doc["children"]) if doc else {}

    def serving(self) -> set[str]:
        """The children that serve: every one but a standby worker booted ahead of need."""
        return {n for n, c in self.children().items() if c.get("state") != "standby"}

    def pid(self, name: str) -> int:
        """The current pid of child ``name``."""
        return int(self.children()[name]["pid"])

    def cpu_answers(self) -> bool:
        """Whether a CPU worker answers a ping now."""
        return bool(self.cpu_node())

    def cpu_node(self) -> str:
        """The node name of the CPU worker answering a ping now (``""`` if none)."""
        with contextlib.suppress(*BROKER_ERRORS):
            for reply in self.app.control.ping(timeout=PING_TIMEOUT_S) or []:
                for name in reply:
                    if name.startswith("cpu-"):
                        return str(name)
        return ""


def start_up(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Up:
    """Start ``taskfleet up`` in a fresh data folder; return once its supervisor watches."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKFLEET_")}
    data_dir = tmp / "data"
    port = free_port()
    env.update(
        TASKFLEET_DATA_DIR=str(data_dir),
        TASKFLEET_SOFT_TIME_LIMIT="20",
        TASKFLEET_HARD_TIME_LIMIT="30",
        TASKFLEET_VISIBILITY_TIMEOUT="40",  # a job lost in a crash comes back soon
        TASKFLEET_DIAG_JOBS="true",  # diag.gate holds a job across a SIGTERM
        TASKFLEET_RESILIENCE_RESTART_BACKOFF=str(RESTART_BACKOFF_S),
        TASKFLEET_RESILIENCE_WORKER_SILENCE=str(WORKER_SILENCE_S),
        TASKFLEET_METRICS_PORT=str(free_port()),  # up's metrics endpoint, off the default port
        # beat's autoscaler, quick: it starts and stops solo CPU workers through up.
        TASKFLEET_AUTOSCALE_INTERVAL=str(AUTOSCALE_INTERVAL_S),
        TASKFLEET_AUTOSCALE_INSPECT_TIMEOUT="0.5",
        TASKFLEET_AUTOSCALE_UP_COOLDOWN="1",
        TASKFLEET_AUTOSCALE_DOWN_COOLDOWN="3",
        TASKFLEET_AUTOSCALE_CPU_WORKER_MAX=str(AUTOSCALE_MAX),
        TASKFLEET_AUTOSCALE_CPU_STEP_DOWN=str(AUTOSCALE_MAX),
        COLUMNS="200",
        NO_COLOR="1",
    )
    output = tmp / "up.out"
    with output.open("w") as out:
        proc = subprocess.Popen(
            [*CLI, "up", *UP_ARGS, "--flower-port", str(port)],
            cwd=tmp,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        wait_for(
            lambda: proc.poll() is not None or read_status(data_dir),
            UP_READY_TIMEOUT_S,
            "taskfleet up to supervise",
        )
        assert proc.poll() is None, output.read_text()
    except BaseException:
        stop_up(proc)
        raise
    urls = EmbeddedStack(data_dir).status()
    redis_url = str(urls["redis"]["url"])  # type: ignore[index]
    database_url = str(urls["postgres"]["url"])  # type: ignore[index]
    for name in [n for n in os.environ if n.startswith("TASKFLEET_")]:
        monkeypatch.delenv(name)
    settings = load_settings(
        data_dir=str(data_dir),
        broker_url=redis_url,
        redis_url=redis_url,
        database_url=database_url,
        embedded=False,
        _env_file=None,
    )
    return Up(proc, data_dir, output, port, create_app(settings), redis_url)


def stop_up(proc: subprocess.Popen[str]) -> None:
    """SIGTERM ``taskfleet up`` (a warm shutdown) and wait; kill its tree if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            proc.wait()


def queued_ids(store: redis.Redis) -> set[str]:
    """Ids of the jobs waiting in the CPU queue's Redis lists."""
    ids = set()
    for key in redis_priority_keys(CPU_QUEUE):
        for raw in store.lrange(key, 0, -1):
            ids.add(str(json.loads(raw)["headers"]["id"]))
    return ids


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (zombies do not)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


@contextlib.contextmanager
def running_up(tmp: Path) -> Iterator[Up]:
    """A ``taskfleet up`` (workers, beat, Flower, embedded stack), stopped and destroyed after."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        running = start_up(tmp, monkeypatch)
        try:
            yield running
        finally:
            stop_up(running.proc)
            running.app.close()
            logs = running.data_dir / "logs"
            if logs.is_dir():  # kept next to up.out for a failure's post-mortem
                shutil.copytree(logs, tmp / "logs", dirs_exist_ok=True)
            EmbeddedStack(running.data_dir).destroy()


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    """One ``taskfleet up`` for the module's tests (the last one stops it with SIGTERM)."""
    with running_up(tmp_path_factory.mktemp("up")) as running:
        yield running


@pytest.fixture(scope="module")
def flower(up: Up) -> psutil.Process:
    """Flower's process, once it answers."""
    return answering_flower(up.pid("flower"), up.flower_port)


# The exposure checks (issue 19) come first: they read the fleet as `up` started it.
def test_no_secret_is_on_the_command_line_of_up_or_its_children(
    up: Up, flower: psutil.Process
) -> None:
    assert_no_secret_on_command_lines(
        up.proc.pid, flower, [up.pid(name) for name in EXPOSURE_CHILDREN]
    )


def test_flower_listens_on_loopback_only(up: Up, flower: psutil.Process) -> None:
    assert_flower_listens_on_loopback_only(flower, up.flower_port)


def test_flower_pages_need_credentials_and_the_open_ones_stay_on_loopback(
    up: Up, flower: psutil.Process
) -> None:
    assert_flower_pages_need_credentials(flower, up.flower_port)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_of_a_worker_tree_restarts_it_within_seconds(up: Up) -> None:
    before = up.children()
    stack = EmbeddedStack(up.data_dir).status()
    services = {name: stack[name]["pid"] for name in ("redis", "postgres")}  # type: ignore[index]
    victim = int(before["cpu-worker"]["pid"])
    assert len(psutil.Process(victim).children(recursive=True)) >= 1  # pool, persister

    killed_at = time.monotonic()
    kill_tree(victim)
    wait_for(lambda: up.pid("cpu-worker") != victim, RECOVERY_TIMEOUT_S, "a new cpu-worker")
    wait_for(up.cpu_answers, RECOVERY_TIMEOUT_S, "the restarted cpu-worker to answer a ping")
    took = time.monotonic() - killed_at
    print(f"\nSIGKILL of the cpu-worker tree -> restarted worker answers ping: {took:.2f}s")

    # The 10 s target is reported (the line above; 5-8 s here), not asserted: the deadlines
    # above only tell a restart from none, on any machine (RECOVERY_TIMEOUT_S).
    after = up.children()
    for name in ("io-worker", "beat", "flower"):
        assert after[name]["pid"] == before[name]["pid"], name
        assert alive(int(after[name]["pid"])), name
    stack = EmbeddedStack(up.data_dir).status()
    assert {n: stack[n]["pid"] for n in services} == services  # type: ignore[index]
    assert after["cpu-worker"]["restarts"] == 1
    assert after["cpu-worker"]["last_exit"] == "killed by SIGKILL (9)"
    assert not psutil.pid_exists(victim) or not alive(victim)
    client = Client(up.app)
    assert client.enqueue("cpu.checksum", {"rounds": 2}).result(timeout=JOB_TIMEOUT_S)
    wait_for(lambda: "cpu-worker back" in up.text(), RECOVERY_TIMEOUT_S, "the recovery line")
    assert f"cpu-worker (pid {victim}) died: killed by SIGKILL (9)" in up.text()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_worker_killed_by_sigxcpu_is_restarted_like_any_other(up: Up) -> None:
    victim = up.pid("cpu-worker")
    restarts = int(up.children()["cpu-worker"]["restarts"])

    os.kill(victim, signal.SIGXCPU)  # what RLIMIT_CPU sends a solo worker stuck in C code

    wait_for(lambda: up.pid("cpu-worker") != victim, RECOVERY_TIMEOUT_S, "a new cpu-worker")
    wait_for(up.cpu_answers, RECOVERY_TIMEOUT_S, "the restarted cpu-worker to answer a ping")
    status = up.children()["cpu-worker"]
    assert status["restarts"] == restarts + 1
    assert "SIGXCPU" in status["last_exit"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_worker_alive_but_answering_no_ping_is_restarted(up: Up) -> None:
    """SIGSTOP freezes the I/O worker's main process (as a deadlock would): its process
    lives, so only the failed ping check can tell; the supervisor ends it and starts another."""
    victim = up.pid("io-worker")
    before = up.children()
    restarts = int(before["io-worker"]["restarts"])

    os.kill(victim, signal.SIGSTOP)
    try:
        wait_for(lambda: up.pid("io-worker") != victim, RECOVERY_TIMEOUT_S, "a new io-worker")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGCONT)
    status = up.children()["io-worker"]
    assert status["restarts"] == restarts + 1
    assert status["last_exit"].startswith("stalled: alive, but answered no ping for ")
    assert not alive(victim)
    wait_for(lambda: "io-worker back" in up.text(), RECOVERY_TIMEOUT_S, "the recovery line")
    assert f"io-worker (pid {victim}) died: stalled" in up.text()
    client = Client(up.app)
    assert client.enqueue("io.wait", {"ms": 1}).result(timeout=JOB_TIMEOUT_S) is not None
    after = up.children()  # the others answered all along: left alone
    for name in ("cpu-worker", "beat", "flower"):
        assert after[name]["pid"] == before[name]["pid"], name


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_of_the_embedded_redis_restarts_it_from_its_aof(up: Up) -> None:
    # The CPU worker stops consuming, so the jobs sit in Redis (not in a worker) when it dies:
    # they can only run afterwards if the restarted Redis replayed them from its AOF.
    node = up.cpu_node()
    up.app.control.cancel_consumer(CPU_QUEUE, destination=[node], reply=True)
    client = Client(up.app)
    store = redis.Redis.from_url(up.redis_url)
    handles = client.enqueue_many(
        [("cpu.checksum", {"rounds": 1 + i % 7}) for i in range(JOBS_ACROSS_REDIS_KILL)]
    )
    # A few jobs may already be in the worker (fetches in flight when its consumer stopped);
    # the rest sit in Redis, and those are the ones that must survive the kill.
    waiting = queued_ids(store)
    assert len(waiting) >= len(handles) // 2, len(waiting)
    old = EmbeddedStack(up.data_dir).status()["redis"]["pid"]  # type: ignore[index]

    killed_at = time.monotonic()
    os.kill(int(old), signal.SIGKILL)

    def restarted() -> bool:
        entry = EmbeddedStack(up.data_dir).status()["redis"]
        return bool(entry["running"] and entry["pid"] != old)  # type: ignore[index]

    wait_for(restarted, RECOVERY_TIMEOUT_S, "the embedded redis to be restarted")
    took_redis = time.monotonic() - killed_at
    wait_for(up.cpu_answers, RECOVERY_TIMEOUT_S, "the cpu worker to answer a ping")
    took = time.monotonic() - killed_at
    print(f"\nSIGKILL of redis -> redis serves: {took_redis:.2f}s, cpu-worker answers: {took:.2f}s")

    # A worker re-declares its queues when it reconnects; ask anyway, in case it did not.
    with contextlib.suppress(*BROKER_ERRORS):
        up.app.control.add_consumer(CPU_QUEUE, destination=[node])
    for handle in handles:
        if handle.id in waiting:
            assert handle.result(timeout=JOB_TIMEOUT_S)["rounds"] >= 1
    wait_for(lambda: "redis back" in up.text(), RECOVERY_TIMEOUT_S, "the redis recovery line")
    assert up.children()["redis"]["restarts"] == 1
    assert up.proc.poll() is None
    store.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_autoscaler_starts_and_stops_solo_cpu_workers_through_up(up: Up) -> None:
    """The default CPU pool is one solo worker per process; beat's autoscaler grows it under
    a backlog by asking up for more processes, and shrinks it back when the backlog is gone."""
    # Earlier tests' jobs may have grown the pool: it is back to one worker once idle.
    wait_for(
        lambda: not any(name.startswith("cpu-worker-") for name in up.serving()),
        RECOVERY_TIMEOUT_S,
        "the CPU pool back at one worker",
    )
    # Below its maximum, the pool keeps one standby worker booted: the grow promotes it.
    wait_for(
        lambda: any(c.get("state") == "standby" for c in up.children().values()),
        RECOVERY_TIMEOUT_S,
        "a standby CPU worker",
    )
    (standby_pid,) = [c["pid"] for c in up.children().values() if c.get("state") == "standby"]
    # A tick that saw the burst may have started (and be stamped) up to an interval before
    # it: read decisions from one interval earlier (an older shrink may come along).
    since = time.time() - AUTOSCALE_INTERVAL_S
    first = up.pid("cpu-worker")
    told = len(up.text())  # what up printed before (earlier tests killed workers)
    client = Client(up.app)
    store = redis.Redis.from_url(up.redis_url)
    gate = f"scale-{os.getpid()}"
    handles = client.enqueue_many(
        [("diag.gate", {"gate": gate, "i": i, "max_s": 120}) for i in range(BURST_JOBS)]
    )

    def added_workers() -> set[str]:
        # Their numbers are the lowest free ones, which earlier tests' workers may hold.
        return {name for name in up.serving() if name.startswith("cpu-worker-")}

    added: set[str] = set()
    try:
        wait_for(
            lambda: len(added_workers()) == AUTOSCALE_MAX - 1,
            RECOVERY_TIMEOUT_S,
            "more CPU workers",
        )
        added = added_workers()
        pids = [up.pid(name) for name in added]
        assert standby_pid in pids  # promoted, not started anew
        ids = {h.id for h in handles}
        # A busy solo worker answers no inspect: count what is left in the queue instead
        # (a solo worker takes one job at a time, and reserves none beside it).
        wait_for(
            lambda: len(queued_ids(store) & ids) == BURST_JOBS - AUTOSCALE_MAX,
            RECOVERY_TIMEOUT_S,
            f"{AUTOSCALE_MAX} CPU workers each taking a held job",
        )
    finally:
        store.set(gate_key(gate), 1, ex=600)
    assert all(h.result(timeout=JOB_TIMEOUT_S)["opened"] is True for h in handles)
    wait_for(lambda: not added & up.serving(), RECOVERY_TIMEOUT_S, "the added workers retired")
    wait_for(lambda: not any(alive(pid) for pid in pids), RECOVERY_TIMEOUT_S, "their exits")
    assert up.pid("cpu-worker") == first  # the first worker (the persister's) stays
    history = AutoscaleStore(store, 1.0).history(500)
    cpu = [
        (e["at"], e["pools"]["cpu"])
        for e in history
        if e.get("status") == "decided" and e["at"] >= since
    ]
    applied = [(at, c) for at, c in cpu if c["decision"]["action"] != "hold"]
    grown_at = min(at for at, c in applied if c["decision"]["action"] == "grow")
    assert any(c["decision"]["action"] == "shrink" and at > grown_at for at, c in applied), applied
    for _, entry in applied:
        (group,) = entry["result"]
        assert group.startswith("cpu-slots-"), entry
        assert entry["result"][group]["outcome"] == "ok", entry
    for name in added:  # retired, not crashed
        assert f"{name} (pid" not in up.text()[told:]
    store.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_poison_pill_that_kills_its_solo_worker_is_dead_lettered_and_up_carries_on(
    up: Up,
) -> None:
    """A job that SIGKILLs the (solo) worker running it takes the worker down each time: up
    restarts it, the job is dead-lettered after its deliveries, the next job runs, and up
    does not give up, although with the earlier tests' kills the CPU worker has now died
    more often in a minute than a child that never comes up may."""
    killed = re.compile(r"cpu-worker(-\d+)? \(pid \d+\) died: killed by SIGKILL")
    kills = len(killed.findall(up.text()))
    client = Client(up.app)
    dlqs = DeadLetterQueues(settings_of(up.app))
    counter = f"t:kill:{uuid.uuid4().hex}"
    handle = client.enqueue("diag.suicide", {"counter": counter})
    after = client.enqueue("cpu.noop", None)
    letter = wait_for(
        lambda: dlqs.show(handle.id), GIVE_UP_TIMEOUT_S, "the poison pill's dead letter"
    )
    assert letter.reason == "poison_pill"
    assert letter.attempts == MAX_DELIVERIES
    assert after.result(timeout=JOB_TIMEOUT_S) == {"ok": True}
    store = redis.Redis.from_url(up.redis_url)
    assert int(store.get(counter_key(counter)) or 0) == MAX_DELIVERIES
    store.close()
    assert up.proc.poll() is None, up.text()
    # Each delivery took a CPU worker down (the autoscaler may have started a second one).
    assert len(killed.findall(up.text())) == kills + MAX_DELIVERIES, up.text()
    assert "giving up" not in up.text()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigterm_is_still_a_warm_shutdown_that_finishes_running_jobs(up: Up) -> None:
    client = Client(up.app)
    gate = f"warm-{os.getpid()}"
    handle = client.enqueue("diag.gate", {"gate": gate, "max_s": 60})
    store = redis.Redis.from_url(up.redis_url)

    def running() -> bool:
        # Taken from the queue by a CPU worker: a solo worker reserves no job beside the one
        # it runs (and answers no inspect while it runs it).
        return handle.id not in queued_ids(store)

    wait_for(running, RECOVERY_TIMEOUT_S, "the gate job to run")
    up.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "stopping" in up.text(), RECOVERY_TIMEOUT_S, "up to start stopping")
    redis.Redis.from_url(up.redis_url).set(gate_key(gate), 1)  # the running job may end now
    code = up.proc.wait(STOP_TIMEOUT_S)

    text = up.text()
    assert code == 0, text
    assert "warning: killed" not in text  # every child exited on SIGTERM in time
    # Every child: the five, and any CPU worker the autoscaler had added meanwhile.
    stopped = re.search(r"stopped (\d+) processes", text)
    assert stopped is not None, text
    assert int(stopped.group(1)) >= UP_CHILDREN, text
    assert handle.result(timeout=JOB_TIMEOUT_S)["opened"] is True  # --keep-services


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_child_crashing_in_a_tight_loop_makes_up_give_up_naming_it(tmp_path: Path) -> None:
    with running_up(tmp_path) as up:
        victim = up.pid("flower")
        os.kill(victim, signal.SIGKILL)
        with socket.socket() as squatter:  # every restarted Flower finds its port taken
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

            def bound() -> bool:
                try:
                    squatter.bind(("127.0.0.1", up.flower_port))
                except OSError:
                    return False
                return True

            wait_for(bound, RECOVERY_TIMEOUT_S, "Flower's port to be free")
            squatter.listen()
            code = up.proc.wait(GIVE_UP_TIMEOUT_S)

        text = up.text()
        assert code == 1, text
        assert f"giving up on flower: it crashed {GIVE_UP_CRASHES} times within 60s" in text
        assert "last exit status" in text
        assert "--- last lines of" in text
        # Everything else was stopped: the five, and the standby CPU worker once started.
        stopped = re.search(r"stopped (\d+) processes", text)
        assert stopped is not None, text
        assert int(stopped.group(1)) in (UP_CHILDREN, UP_CHILDREN + 1), text
        status = read_status(up.data_dir)
        assert status is not None
        assert status["supervisor_running"] is False
