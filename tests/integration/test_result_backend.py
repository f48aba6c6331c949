"""The result backend on real workers: Celery's API, Celery's key format, Postgres fallback."""

from __future__ import annotations

import json

import pytest
import redis
from celery import chord, group
from celery.result import AsyncResult
from sqlalchemy import Engine, text

from tests.support.waiting import wait_for
from tests.support.workers import Fleet

pytestmark = pytest.mark.usefixtures("clean_state")


def test_async_result_state_group_and_chord(redis_fleet: Fleet, redis_client: redis.Redis) -> None:
    app = redis_fleet.app()
    single = app.send_task("cpu.checksum", args=[{"rounds": 2}])
    assert len(single.get(timeout=30)["sha256"]) == 64
    assert single.state == "SUCCESS"
    raw = redis_client.get(f"celery-task-meta-{single.id}")  # Celery's own key and format
    assert raw is not None
    assert json.loads(raw)["status"] == "SUCCESS"
    rounds = [1, 2, 3]
    grouped = group(app.signature("cpu.checksum", args=[{"rounds": r}]) for r in rounds)()
    assert [r["rounds"] for r in grouped.get(timeout=30)] == rounds
    joined = chord(
        [app.signature("cpu.checksum", args=[{"rounds": r}]) for r in rounds],
        app.signature("io.noop"),
    )()
    assert joined.get(timeout=30) == {"ok": True}
    failed = app.send_task("cpu.checksum", args=[{"rounds": 0}])
    with pytest.raises(ValueError, match="rounds must be"):
        failed.get(timeout=30)
    assert failed.state == "FAILURE"


def test_result_read_from_postgres_after_redis_lost_it(
    redis_fleet: Fleet, redis_client: redis.Redis, engine: Engine
) -> None:
    app = redis_fleet.app()
    sent = app.send_task("cpu.checksum", args=[{"rounds": 4}])
    value = sent.get(timeout=30)
    key = f"celery-task-meta-{sent.id}"

    def persisted() -> bool:
        with engine.connect() as conn:
            return bool(
                conn.execute(
                    text("SELECT 1 FROM taskfleet_results WHERE key = :k"), {"k": key}
                ).first()
            )

    wait_for(persisted, 30, "the result in Postgres")
    redis_client.delete(key)
    reader = redis_fleet.app()  # a fresh client: nothing in its L1
    again = AsyncResult(sent.id, app=reader)
    assert again.state == "SUCCESS"
    assert again.get(timeout=10) == value
    restored = redis_client.get(key)  # back-filled into Redis in Celery's format
    assert restored is not None
    assert json.loads(restored)["result"] == value
    assert redis_client.ttl(key) > 0


def test_polling_a_pending_job_asks_postgres_once_per_second(
    redis_fleet: Fleet, redis_client: redis.Redis, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis miss goes to Postgres; a Postgres miss is remembered for ABSENT_TTL_S."""
    from taskfleet.results import backend as backend_module
    from taskfleet.results import store

    queries: list[str] = []
    real_fetch = store.fetch_result

    def counted_fetch(engine_: Engine, key: str) -> object:
        queries.append(key)
        return real_fetch(engine_, key)  # the real query, on the real database

    monkeypatch.setattr(store, "fetch_result", counted_fetch)
    reader = redis_fleet.app()
    backend = reader.backend
    now = [1000.0]
    backend.clock = lambda: now[0]
    pending = AsyncResult("never-sent-0001", app=reader)
    for _ in range(20):
        assert pending.state == "PENDING"
    assert len(queries) == 1
    now[0] += backend_module.ABSENT_TTL_S + 0.01
    assert pending.state == "PENDING"
    assert len(queries) == 2

    # A result that only Postgres has is still found once the remembered miss has expired.
    sent = reader.send_task("cpu.checksum", args=[{"rounds": 3}])
    value = sent.get(timeout=30)
    key = f"celery-task-meta-{sent.id}"

    def persisted() -> bool:
        with engine.connect() as conn:
            found = conn.execute(text("SELECT 1 FROM taskfleet_results WHERE key = :k"), {"k": key})
            return found.first() is not None

    wait_for(persisted, 30, "the result in Postgres")
    fresh = redis_fleet.app()
    fresh.backend.clock = lambda: now[0]
    redis_client.delete(key)
    fresh.backend._absent[key] = True  # as if a poll had missed it just before it was stored
    assert AsyncResult(sent.id, app=fresh).state == "PENDING"
    now[0] += backend_module.ABSENT_TTL_S + 0.01
    assert AsyncResult(sent.id, app=fresh).get(timeout=10) == value
