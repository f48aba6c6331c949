"""Redis keeps a result for ``result_expires``, Postgres for ``result_retention``; reads of a
result Redis let expire come from Postgres and are back-filled for ``BACKFILL_TTL_S`` only.

Written through the real backend into the session's Redis and Postgres, landed by a real
persister; the Redis key is then expired as its TTL would, and read through ``AsyncResult``.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis
from celery import Celery
from celery.result import AsyncResult
from sqlalchemy import Engine, create_engine, text

from taskfleet.app import create_app, settings_of
from taskfleet.config import load_settings
from taskfleet.results.backend import BACKFILL_TTL_S
from taskfleet.results.persister import ResultPersister
from taskfleet.results.store import purge_expired_results
from tests.support.waiting import wait_for

LAND_TIMEOUT_S = 60.0
EXPIRE_TIMEOUT_S = 5.0
#: Slack for the seconds between the write and the checks.
SLACK_S = 120
SHORT_TTL_S = 120


def _app(services: dict[str, str], **overrides: Any) -> Celery:
    settings = {k.removeprefix("TASKFLEET_").lower(): v for k, v in services.items()}
    return create_app(load_settings(**settings, **overrides))


def _seconds_left(engine: Engine, key: str) -> float | None:
    """Seconds until the row's ``expires_at``, or None while the row is not there."""
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT extract(epoch FROM expires_at - now()) FROM taskfleet_results "
                "WHERE key = :k"
            ),
            {"k": key},
        ).first()
    return None if row is None else float(row[0])


def _write_and_land(app: Celery, redis_client: redis.Redis, engine: Engine) -> tuple[str, str]:
    """Store a result through the backend and wait until the persister has landed it."""
    task_id = f"retention-{uuid.uuid4().hex}"
    app.backend.store_result(task_id, {"kept": task_id}, "SUCCESS")
    key = app.backend.get_key_for_task(task_id).decode()
    persister = ResultPersister(redis_client, engine, batch_size=50)
    wait_for(
        lambda: persister.drain() >= 0 and _seconds_left(engine, key) is not None,
        LAND_TIMEOUT_S,
        "the result in Postgres",
    )
    return task_id, key


def _expire(redis_client: redis.Redis, key: str) -> None:
    """Let the Redis copy expire now, as its TTL would."""
    redis_client.pexpire(key, 1)
    wait_for(lambda: not redis_client.exists(key), EXPIRE_TIMEOUT_S, "the key to expire")


@pytest.mark.parametrize("redis_ttl", [None, SHORT_TTL_S])
def test_a_short_redis_ttl_leaves_postgres_retention_whole(
    services: dict[str, str], redis_client: redis.Redis, engine: Engine, redis_ttl: int | None
) -> None:
    overrides = {} if redis_ttl is None else {"result_expires": redis_ttl}
    app = _app(services, **overrides)
    settings, retention = settings_of(app), app.backend.retention
    assert retention >= max(settings.result_retention, settings.result_expires)
    task_id, key = _write_and_land(app, redis_client, engine)
    assert settings.result_expires - SLACK_S < redis_client.ttl(key) <= settings.result_expires
    left = _seconds_left(engine, key)
    assert left is not None
    assert retention - SLACK_S < left <= retention

    _expire(redis_client, key)
    reader = _app(services, **overrides)  # a fresh process's view: nothing in its L1
    assert AsyncResult(task_id, app=reader).get(timeout=10) == {"kept": task_id}
    backfilled = redis_client.ttl(key)
    assert 0 < backfilled <= min(BACKFILL_TTL_S, settings.result_expires)


def test_polls_of_an_expired_result_read_the_backfill_not_postgres(
    services: dict[str, str],
    redis_client: redis.Redis,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from taskfleet.results import store

    app = _app(services)
    task_id, key = _write_and_land(app, redis_client, engine)
    _expire(redis_client, key)
    queries: list[str] = []
    real_fetch = store.fetch_result

    def counted_fetch(engine_: Engine, key_: str) -> object:
        queries.append(key_)
        return real_fetch(engine_, key_)

    monkeypatch.setattr(store, "fetch_result", counted_fetch)
    first = _app(services).backend.get(key)  # Redis miss: Postgres, then back-filled
    assert queries == [key]
    for _ in range(5):  # other processes polling: each reads the back-fill in Redis
        assert _app(services).backend.get(key) is not None
    assert queries == [key]
    assert first is not None
    assert task_id in (first if isinstance(first, str) else first.decode())


def _age_out(engine: Engine, *keys: str) -> None:
    """Set the rows' ``expires_at`` in the past, as if their retention had passed."""
    with engine.begin() as conn:
        for key in keys:
            conn.execute(
                text(
                    "UPDATE taskfleet_results SET expires_at = now() - interval '1 second' "
                    "WHERE key = :k"
                ),
                {"k": key},
            )


def test_results_past_their_retention_are_purged_and_the_others_kept(
    services: dict[str, str], redis_client: redis.Redis, engine: Engine
) -> None:
    """Postgres keeps a result for its retention, not forever: the persister's purge round."""
    app = _app(services)
    kept, gone, batched_a, batched_b = (
        _write_and_land(app, redis_client, engine)[1] for _ in range(4)
    )
    _age_out(engine, gone)
    persister = ResultPersister(redis_client, engine, purge_interval_s=0)
    persister._cycle()  # one round of the loop: a step, then the purge it is due
    assert _seconds_left(engine, gone) is None
    left = _seconds_left(engine, kept)
    assert left is not None
    assert left > 0

    _age_out(engine, batched_a, batched_b)
    assert purge_expired_results(engine, batch=1) >= 2  # one row per statement, until none
    assert _seconds_left(engine, batched_a) is None
    assert _seconds_left(engine, batched_b) is None
    assert _seconds_left(engine, kept) is not None


def test_the_first_purge_on_a_fresh_database_finds_its_tables(
    services: dict[str, str], redis_client: redis.Redis, engine: Engine
) -> None:
    """A persister whose first purge comes before its first result (a fleet that has stored
    nothing yet) creates the tables instead of failing on them."""
    name = f"taskfleet_fresh_{uuid.uuid4().hex[:8]}"
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    fresh = create_engine(engine.url.set(database=name))
    try:
        persister = ResultPersister(redis_client, fresh, purge_interval_s=0)
        persister._cycle()  # nothing to write; the purge is due
        with fresh.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM taskfleet_results")).scalar() == 0
            assert conn.execute(text("SELECT count(*) FROM taskfleet_cache")).scalar() == 0
    finally:
        fresh.dispose()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
