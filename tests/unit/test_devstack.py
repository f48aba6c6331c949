"""Tests of the embedded development stack (real redis-server and PostgreSQL, no mocks)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import psycopg
import pytest
import redis

from taskfleet.devstack import (
    DEFAULT_DATA_DIR,
    DevStackError,
    EmbeddedStack,
    StackURLs,
    ensure_running,
    postgres_server,
    redis_server,
)

#: How long a restart waits for its remembered port here, where the port stays taken (the
#: real wait, PREFERRED_PORT_WAIT_S, is for a server just killed that still holds it).
TAKEN_PORT_WAIT_S = 0.2


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _wait_dead(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still alive"
        time.sleep(0.02)


def _servers_in(workdir: Path, name: str) -> list[psutil.Process]:
    """Live processes called ``name`` working in ``workdir``."""
    target = os.path.realpath(workdir)
    found = []
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] != name:
            continue
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.cwd() == target:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _postmasters(stack: EmbeddedStack) -> list[psutil.Process]:
    procs = _servers_in(stack.pg_dir, "postgres")
    pids = {p.pid for p in procs}
    found = []
    for proc in procs:
        try:  # a backend may exit between the listing and this look (seen in a CI run)
            if proc.ppid() not in pids:
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


def _pg_conninfo(urls: StackURLs) -> str:
    return urls.database_url.replace("postgresql+psycopg://", "postgresql://", 1)


def _pids(stack: EmbeddedStack) -> tuple[Any, Any]:
    status = stack.status()
    redis_status = status["redis"]
    pg_status = status["postgres"]
    assert isinstance(redis_status, dict)
    assert isinstance(pg_status, dict)
    return redis_status["pid"], pg_status["pid"]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[EmbeddedStack]:
    """A stack in a fresh folder; destroyed afterwards so no server outlives the test."""
    s = EmbeddedStack(tmp_path / "tf")
    try:
        yield s
    finally:
        s.destroy()


def _start_in_process(data_dir: str, barrier: Any, queue: Any) -> None:
    barrier.wait(30)
    try:
        urls = ensure_running(data_dir)
        queue.put(("ok", urls))
    except Exception as exc:
        queue.put(("error", repr(exc)))


@pytest.mark.timeout(120)
def test_cold_start_gives_working_urls(stack: EmbeddedStack) -> None:
    assert DEFAULT_DATA_DIR == ".taskfleet"
    urls = stack.ensure_running()

    assert urls.redis_url.startswith("redis://127.0.0.1:")
    assert urls.redis_url.endswith("/0")
    assert urls.database_url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
    assert urls.database_url.endswith("/taskfleet")

    client = redis.Redis.from_url(urls.redis_url)
    try:
        assert client.ping() is True
    finally:
        client.close()
    with psycopg.connect(_pg_conninfo(urls)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SELECT current_database()").fetchone() == ("taskfleet",)

    state = json.loads((stack.data_dir / "stack.json").read_text())
    assert urls.redis_url.endswith(f":{state['redis_port']}/0")
    assert f":{state['postgres_port']}/" in urls.database_url

    # Both listen on loopback TCP only; postgres has no unix socket.
    redis_pid, pg_pid = _pids(stack)
    for pid in (redis_pid, pg_pid):
        listening = [c for c in psutil.Process(pid).net_connections("inet") if c.status == "LISTEN"]
        assert listening
        assert {c.laddr.ip for c in listening} == {"127.0.0.1"}
    assert not list(stack.pg_dir.glob(".s.PGSQL.*"))

    status = stack.status()
    assert status["data_dir"] == str(stack.data_dir)
    for name in ("redis", "postgres"):
        entry = status[name]
        assert isinstance(entry, dict)
        assert entry["running"] is True
        assert _alive(entry["pid"])


@pytest.mark.timeout(120)
def test_ensure_running_twice_is_idempotent(stack: EmbeddedStack) -> None:
    assert not stack.is_running()
    first = stack.ensure_running()
    assert stack.is_running()
    pids = _pids(stack)

    for _ in range(5):
        assert stack.ensure_running() == first
    assert _pids(stack) == pids  # nothing was restarted
    # A fresh object (as in another process) sees the same servers.
    assert EmbeddedStack(stack.data_dir).ensure_running() == first
    assert ensure_running(stack.data_dir) == first
    assert _pids(stack) == pids
    assert len(_servers_in(stack.redis_dir, "redis-server")) == 1
    assert len(_postmasters(stack)) == 1


@pytest.mark.timeout(120)
def test_concurrent_processes_start_each_server_once(stack: EmbeddedStack) -> None:
    ctx = multiprocessing.get_context("spawn")
    n = 4
    barrier = ctx.Barrier(n)
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_start_in_process, args=(str(stack.data_dir), barrier, queue))
        for _ in range(n)
    ]
    for p in procs:
        p.start()
    try:
        results = [queue.get(timeout=90) for _ in range(n)]
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert all(kind == "ok" for kind, _ in results), results
    urls = {value for _, value in results}
    assert len(urls) == 1

    # The servers outlived the processes that started them.
    assert stack.ensure_running() in urls
    assert len(_servers_in(stack.redis_dir, "redis-server")) == 1
    assert len(_postmasters(stack)) == 1
    redis_pid, pg_pid = _pids(stack)
    assert _servers_in(stack.redis_dir, "redis-server")[0].pid == redis_pid
    assert _postmasters(stack)[0].pid == pg_pid


@pytest.mark.timeout(120)
def test_stop_then_restart_keeps_data(stack: EmbeddedStack) -> None:
    urls = stack.ensure_running()
    old_redis, old_pg = _pids(stack)
    client = redis.Redis.from_url(urls.redis_url)
    try:
        client.set("devstack:key", "kept")
    finally:
        client.close()
    with psycopg.connect(_pg_conninfo(urls)) as conn:
        conn.execute("CREATE TABLE kept (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO kept VALUES (1, 'survives')")

    stack.stop()
    assert not _alive(old_redis)
    assert not _alive(old_pg)
    assert not stack.is_running()
    for name in ("redis", "postgres"):
        entry = stack.status()[name]
        assert isinstance(entry, dict)
        assert entry["running"] is False
        assert entry["pid"] is None
    assert not _servers_in(stack.pg_dir, "postgres")
    stack.stop()  # idempotent

    again = stack.ensure_running()
    assert again == urls  # same ports reused
    new_redis, new_pg = _pids(stack)
    assert new_redis != old_redis
    assert new_pg != old_pg
    client = redis.Redis.from_url(again.redis_url)
    try:
        assert client.get("devstack:key") == b"kept"
    finally:
        client.close()
    with psycopg.connect(_pg_conninfo(again)) as conn:
        assert conn.execute("SELECT note FROM kept WHERE id = 1").fetchone() == ("survives",)


@pytest.mark.timeout(120)
def test_kill_9_redis_is_detected_and_restarted(stack: EmbeddedStack) -> None:
    urls = stack.ensure_running()
    redis_pid, pg_pid = _pids(stack)
    os.kill(redis_pid, signal.SIGKILL)
    _wait_dead(redis_pid)
    assert stack.redis_pidfile.exists()  # stale pidfile left behind
    status = stack.status()
    assert isinstance(status["redis"], dict)
    assert status["redis"]["running"] is False

    again = stack.ensure_running()
    assert again == urls
    new_redis, new_pg = _pids(stack)
    assert new_redis != redis_pid
    assert _alive(new_redis)
    assert new_pg == pg_pid  # postgres untouched
    client = redis.Redis.from_url(again.redis_url)
    try:
        assert client.ping() is True
    finally:
        client.close()


@pytest.mark.timeout(120)
def test_kill_9_postgres_stale_postmaster_pid_is_handled(stack: EmbeddedStack) -> None:
    urls = stack.ensure_running()
    redis_pid, pg_pid = _pids(stack)
    os.kill(pg_pid, signal.SIGKILL)
    _wait_dead(pg_pid)
    assert (stack.pg_dir / "postmaster.pid").exists()  # stale

    again = stack.ensure_running()
    assert again == urls
    new_redis, new_pg = _pids(stack)
    assert new_redis == redis_pid
    assert new_pg != pg_pid
    assert len(_postmasters(stack)) == 1
    with psycopg.connect(_pg_conninfo(again)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.timeout(120)
def test_taken_port_is_replaced_and_remembered(
    stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in (redis_server, postgres_server):
        monkeypatch.setattr(module, "PREFERRED_PORT_WAIT_S", TAKEN_PORT_WAIT_S)
    urls = stack.ensure_running()
    old_port = json.loads(stack.state_path.read_text())["redis_port"]
    stack.stop()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do
        squatter.bind(("127.0.0.1", old_port))
        squatter.listen()
        again = stack.ensure_running()
    new_port = json.loads(stack.state_path.read_text())["redis_port"]
    assert new_port != old_port
    assert again.redis_url == f"redis://127.0.0.1:{new_port}/0"
    assert again.database_url == urls.database_url
    client = redis.Redis.from_url(again.redis_url)
    try:
        assert client.ping() is True
    finally:
        client.close()


@pytest.mark.timeout(120)
def test_start_failure_raises_devstack_error_naming_the_log(stack: EmbeddedStack) -> None:
    stack.ensure_running()
    stack.stop()
    # Corrupt the append-only file: redis refuses to start.
    for aof in stack.redis_dir.glob("appendonly*.aof"):
        aof.write_text("this is not an AOF\n")
    with pytest.raises(DevStackError) as excinfo:
        stack.ensure_running()
    message = str(excinfo.value)
    # Fails fast: it saw the server exit ("exited with status" or "exited during start-up"),
    # it did not wait out the start deadline ("did not answer PING ... within").
    assert "redis-server exited" in message, message
    assert "did not answer" not in message, message
    assert "redis-server" in message
    assert str(stack.redis_log) in message
    assert excinfo.value.log_path == stack.redis_log


@pytest.mark.timeout(120)
def test_destroy_removes_data_and_servers(tmp_path: Path) -> None:
    stack = EmbeddedStack(tmp_path / "tf")
    try:
        stack.ensure_running()
        redis_pid, pg_pid = _pids(stack)
        children = [p.pid for p in _servers_in(stack.pg_dir, "postgres")]
        assert _alive(redis_pid)
        assert _alive(pg_pid)
    finally:
        stack.destroy()
    assert not stack.data_dir.exists()
    for pid in (redis_pid, pg_pid, *children):
        assert not _alive(pid)
    stack.destroy()  # idempotent
    status = stack.status()
    assert isinstance(status["redis"], dict)
    assert status["redis"]["running"] is False
    assert not stack.data_dir.exists()  # status() creates nothing
