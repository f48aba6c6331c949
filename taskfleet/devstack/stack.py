"""The embedded stack: one Redis and one PostgreSQL under a data folder, kept running."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from taskfleet.devstack.common import (
    DEFAULT_DATA_DIR,
    LOCK_FILE_NAME,
    PG_DIR_NAME,
    PG_LOG_NAME,
    REDIS_DIR_NAME,
    REDIS_LOG_NAME,
    REDIS_PIDFILE_NAME,
    STATE_FILE_NAME,
    DevStackError,
    StackURLs,
    clear_leftovers,
)
from taskfleet.devstack.packages import require_embedded_packages
from taskfleet.devstack.postgres_server import PG_PROC_NAME, PostgresServer, database_url
from taskfleet.devstack.redis_server import REDIS_PROC_NAME, RedisServer, redis_url
from taskfleet.devstack.state import locked, read_state, write_state


class EmbeddedStack:
    """An embedded Redis + PostgreSQL pair living under one data folder.

    All methods are safe to call concurrently from several processes: starting and
    stopping are serialised by an ``flock`` on ``<data_dir>/stack.lock``.

    Args:
        data_dir: Folder holding the servers' data, logs and state. Created on first start.
    """

    def __init__(self, data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR) -> None:
        """Describe the stack under ``data_dir``; nothing is started yet."""
        self.data_dir = Path(os.path.abspath(data_dir))
        self.state_path = self.data_dir / STATE_FILE_NAME
        self.lock_path = self.data_dir / LOCK_FILE_NAME
        self.redis_dir = self.data_dir / REDIS_DIR_NAME
        self.redis_pidfile = self.redis_dir / REDIS_PIDFILE_NAME
        self.redis_log = self.data_dir / REDIS_LOG_NAME
        self.pg_dir = self.data_dir / PG_DIR_NAME
        self.pg_log = self.data_dir / PG_LOG_NAME
        self._redis = RedisServer(self.redis_dir, self.redis_pidfile, self.redis_log)
        self._postgres = PostgresServer(self.data_dir, self.pg_dir, self.pg_log)

    def __repr__(self) -> str:
        """``EmbeddedStack(data_dir='...')``."""
        return f"EmbeddedStack(data_dir={str(self.data_dir)!r})"

    def ensure_running(self) -> StackURLs:
        """Start whatever is not running and return the URLs; idempotent.

        When both servers are already up this only checks their pids and ports (well under
        50 ms). Stale pidfiles (reboot, ``kill -9``) are detected and the server restarted;
        a remembered port now taken by another program is replaced by a new one.

        Returns:
            The URLs of the running servers.

        Raises:
            DevStackError: A server failed to start (the message names the log to read), or
                one must start and the ``embedded`` extra is not installed.
        """
        with self._locked():
            state = self._read_state()
            redis = self._redis.probe(state.get("redis_port"))
            pg = self._postgres.probe(state.get("postgres_port"))
            if not (redis.healthy and pg.healthy):
                require_embedded_packages()  # one message naming all that is missing
            if not redis.healthy:
                exclude = {state.get("postgres_port", 0)}
                state["redis_port"] = self._redis.recover(redis, exclude)
                self._write_state(state)
            if not pg.healthy:
                exclude = {state.get("redis_port", 0)}
                state["postgres_port"] = self._postgres.recover(pg, exclude)
                self._write_state(state)
            return StackURLs(
                redis_url=redis_url(int(state["redis_port"])),
                database_url=database_url(int(state["postgres_port"])),
            )

    def is_running(self) -> bool:
        """Whether both servers are up and healthy (starts and locks nothing)."""
        state = self._read_state()
        return (
            self._redis.probe(state.get("redis_port")).healthy
            and self._postgres.probe(state.get("postgres_port")).healthy
        )

    def stop(self) -> None:
        """Stop both servers cleanly and wait until they are gone; the data is kept.

        Redis gets ``SHUTDOWN`` (or SIGTERM, equivalent: the AOF is flushed), PostgreSQL
        ``pg_ctl stop -m fast``; either is killed if it does not exit within
        :data:`~taskfleet.devstack.common.STOP_TIMEOUT`.

        Raises:
            DevStackError: A server process could not be stopped.
        """
        if not self.data_dir.is_dir():
            return
        with self._locked():
            self._stop_servers()

    def status(self) -> dict[str, object]:
        """Describe the stack without starting or locking anything.

        Returns:
            ``{"redis": {...}, "postgres": {...}, "data_dir": str}`` where each server entry
            has ``running`` (bool), ``pid`` (int or None), ``port`` (int or None), ``url``
            (str or None) and ``log`` (path of its log file).
        """
        state = self._read_state()
        redis_port = state.get("redis_port")
        pg_port = state.get("postgres_port")
        redis = self._redis.probe(redis_port)
        pg = self._postgres.probe(pg_port)
        return {
            "redis": {
                "running": redis.healthy,
                "pid": redis.pid,
                "port": redis_port,
                "url": redis_url(redis_port) if redis_port else None,
                "log": str(self.redis_log),
            },
            "postgres": {
                "running": pg.healthy,
                "pid": pg.pid,
                "port": pg_port,
                "url": database_url(pg_port) if pg_port else None,
                "log": str(self.pg_log),
            },
            "data_dir": str(self.data_dir),
        }

    def destroy(self) -> None:
        """Stop both servers and delete the data folder with all data.

        Raises:
            DevStackError: A server process could not be stopped.
        """
        if not self.data_dir.exists():
            return
        with self._locked():
            self._stop_servers()
            clear_leftovers(self.redis_dir, REDIS_PROC_NAME, 0.0, self.redis_log)
            clear_leftovers(self.pg_dir, PG_PROC_NAME, 0.0, self.pg_log)
            # Still holding the lock: processes waiting for it notice the lock file is gone
            # and start over in a new folder.
            try:
                shutil.rmtree(self.data_dir)
            except OSError as exc:
                raise DevStackError(f"could not delete {self.data_dir}: {exc}") from exc

    def _stop_servers(self) -> None:
        self._redis.stop(self._read_state().get("redis_port"))
        self._postgres.stop()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the exclusive cross-process lock on ``stack.lock``."""
        with locked(self.data_dir, self.lock_path):
            yield

    def _read_state(self) -> dict[str, Any]:
        return read_state(self.state_path)

    def _write_state(self, state: dict[str, Any]) -> None:
        write_state(self.state_path, state)


def ensure_running(data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR) -> StackURLs:
    """Start the embedded stack under ``data_dir`` unless running; return its URLs.

    Args:
        data_dir: Data folder of the stack (default ``.taskfleet`` in the current directory).

    Returns:
        The URLs of the running Redis and PostgreSQL.

    Raises:
        DevStackError: A server failed to start (the message names the log to read).
    """
    return EmbeddedStack(data_dir).ensure_running()
