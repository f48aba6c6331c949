"""Stock Celery 5.7 with ``db+postgresql+psycopg://`` results (SQLAlchemy backend)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from bench.common import make_payload
from bench.services import flush_redis, services, truncate_tables
from bench.systems import celery_app as capp
from bench.systems.base import System
from bench.systems.celery_redis import celery_worker_argv

TASKMETA_TABLE = "celery_taskmeta"


class CeleryDbSystem(System):
    """Stock Celery, Redis broker, results in PostgreSQL."""

    name = "celery_db"
    label = "Celery (db+postgresql results)"
    loop_label = "apply_async loop"

    def __init__(self) -> None:
        """Build the producer app."""
        super().__init__()
        svc = services()
        self.url = svc.redis_for(self.name)
        self.backend = "db+" + svc.sqlalchemy_url
        self.app, self.task = capp.make_app(self.url, self.backend, ignore=False, counter_url=None)
        self._conn: psycopg.Connection | None = None

    @property
    def conn(self) -> psycopg.Connection:
        """Autocommit connection used to look for results."""
        if self._conn is None:
            self._conn = psycopg.connect(services().libpq_url, autocommit=True)
        return self._conn

    def reset(self) -> None:
        """FLUSHDB and empty ``celery_taskmeta``."""
        flush_redis(self.url)
        truncate_tables(TASKMETA_TABLE)

    def _spawn_workers(self, n_procs: int) -> None:
        self.workers.spawn(
            celery_worker_argv(n_procs, f"bench-{self.name}@%h"),
            {capp.BROKER_ENV: self.url, capp.BACKEND_ENV: self.backend},
        )

    def publish(self, n: int) -> list[Any]:
        """A loop of ``apply_async``."""
        return self._loop(n)

    def publish_one(self, index: int) -> Any:
        """One ``apply_async``."""
        return self.task.apply_async((make_payload(index),)).id

    def done_flags(self, keys: Sequence[Any]) -> list[bool]:
        """One SELECT for the ids that have a SUCCESS row."""
        exists = self.conn.execute("SELECT to_regclass(%s)", (TASKMETA_TABLE,)).fetchone()
        if not exists or exists[0] is None:
            return [False] * len(keys)
        rows = self.conn.execute(
            f"SELECT task_id FROM {TASKMETA_TABLE} WHERE task_id = ANY(%s) AND status = 'SUCCESS'",
            (list(keys),),
        ).fetchall()
        done = {row[0] for row in rows}
        return [key in done for key in keys]

    def stop(self) -> None:
        """Stop workers and close the lookup connection."""
        super().stop()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
