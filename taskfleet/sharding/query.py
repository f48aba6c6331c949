"""Scatter-gather over the shards: queries and counts in parallel, with a deadline.

Each shard is asked on its read engine (replica when fresh enough, see
:class:`~taskfleet.sharding.cluster.ShardCluster`), all at once; shards that fail or do not
answer by the deadline are listed in ``missing`` and the answer is marked ``partial``.
``kind`` is the task name Celery stores in the meta (``result_extended``).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Select, func, select
from sqlalchemy.exc import SQLAlchemyError

from taskfleet.config.sharding import DEFAULT_QUERY_DEADLINE_S
from taskfleet.results.store import results_table
from taskfleet.sharding.cluster import ShardCluster

DEFAULT_QUERY_LIMIT = 100
T = TypeVar("T")


@dataclass
class ShardAnswer:
    """What the shards answered: ``value``, and the shards missing from it."""

    value: Any
    missing: dict[str, str] = field(default_factory=dict)

    @property
    def partial(self) -> bool:
        """Whether some shard is missing from the answer."""
        return bool(self.missing)


def _filtered(
    query: Select[Any], kind: str | None, state: str | None, since: datetime | None
) -> Select[Any]:
    t = results_table.c
    if kind is not None:
        query = query.where(t.value["name"].astext == kind)
    if state is not None:
        query = query.where(t.status == state)
    if since is not None:
        query = query.where(t.updated_at >= since)
    return query


class ResultStore:
    """Durable results across every shard of ``cluster``."""

    def __init__(self, cluster: ShardCluster, deadline_s: float = DEFAULT_QUERY_DEADLINE_S):
        self.cluster = cluster
        self.deadline_s = deadline_s
        self._pool = ThreadPoolExecutor(len(cluster.names), thread_name_prefix="tf-gather")

    def gather(self, ask: Callable[[Connection], T], *, fresh: bool = False) -> dict[str, Any]:
        """``ask`` run on every shard in parallel: shard -> answer, or the exception."""

        def one(shard: str) -> T:
            with self.cluster.read_engine(shard, fresh=fresh).connect() as conn:
                return ask(conn)

        shards = self.cluster.router.map.shards  # a configured shard not in the map holds nothing
        futures: dict[str, Future[T]] = {s: self._pool.submit(one, s) for s in shards}
        wait(futures.values(), timeout=self.deadline_s)
        answers: dict[str, Any] = {}
        for shard, future in futures.items():
            if not future.done():
                future.cancel()
                answers[shard] = TimeoutError(f"no answer within {self.deadline_s:.1f}s")
            elif (exc := future.exception()) is not None:
                answers[shard] = exc
            else:
                answers[shard] = future.result()
        return answers

    @staticmethod
    def _split(answers: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        ok = {s: a for s, a in answers.items() if not isinstance(a, BaseException)}
        missing = {
            s: (str(a).strip().splitlines() or [type(a).__name__])[0]
            for s, a in answers.items()
            if isinstance(a, BaseException)
        }
        for error in answers.values():
            if isinstance(error, BaseException) and not isinstance(
                error, (SQLAlchemyError, OSError, TimeoutError)
            ):
                raise error  # a bug, not a shard being down
        return ok, missing

    def query(
        self,
        *,
        kind: str | None = None,
        state: str | None = None,
        since: datetime | None = None,
        limit: int = DEFAULT_QUERY_LIMIT,
    ) -> ShardAnswer:
        """Rows (key, status, updated_at, meta), newest first, at most ``limit`` overall."""
        t = results_table.c
        statement = _filtered(select(t.key, t.status, t.updated_at, t.value), kind, state, since)
        statement = statement.order_by(t.updated_at.desc()).limit(limit)
        ok, missing = self._split(self.gather(lambda c: c.execute(statement).mappings().all()))
        rows = sorted(
            (dict(r) for found in ok.values() for r in found),
            key=lambda r: r["updated_at"],
            reverse=True,
        )
        return ShardAnswer(rows[:limit], missing)

    def oldest(self, *, kind: str | None = None, state: str | None = "PENDING") -> ShardAnswer:
        """The least recently updated row matching (default: the oldest pending), or None."""
        t = results_table.c
        statement = _filtered(select(t.key, t.status, t.updated_at), kind, state, None)
        statement = statement.order_by(t.updated_at).limit(1)
        ok, missing = self._split(self.gather(lambda c: c.execute(statement).mappings().all()))
        rows = [dict(r) for found in ok.values() for r in found]
        return ShardAnswer(min(rows, key=lambda r: r["updated_at"], default=None), missing)

    def count(
        self, *, kind: str | None = None, state: str | None = None, since: datetime | None = None
    ) -> ShardAnswer:
        """The number of rows matching, summed over the shards that answered."""
        statement = _filtered(select(func.count()).select_from(results_table), kind, state, since)
        ok, missing = self._split(self.gather(lambda c: int(c.execute(statement).scalar_one())))
        return ShardAnswer(sum(ok.values()), missing)

    def counts_by_shard(self) -> ShardAnswer:
        """Rows per shard (primaries: exact), for ``taskfleet shards status``."""
        statement = select(func.count()).select_from(results_table)
        answers = self.gather(lambda c: int(c.execute(statement).scalar_one()), fresh=True)
        ok, missing = self._split(answers)
        return ShardAnswer(ok, missing)

    def close(self) -> None:
        """End the worker threads (answers in flight are dropped)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
