"""Poison results on real Redis + Postgres: stored as text, quarantined, never retried forever.

Also Postgres down: nothing lost, retried with backoff, the backlog reported and held under
its cap. The Postgres that goes down is a private embedded stack; the session's stay up.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from celery import Celery
from celery.result import AsyncResult
from sqlalchemy import Engine, create_engine, text
from typer.testing import CliRunner

import taskfleet.tasks.sandbox_jobs  # noqa: F401 - registers sandbox.run for the client's router
from taskfleet.app import create_app
from taskfleet.cache.factory import open_cache
from taskfleet.cli import cli
from taskfleet.client import Client
from taskfleet.config import get_settings, load_settings
from taskfleet.config.cache import load_cache_settings
from taskfleet.devstack import EmbeddedStack, StackURLs
from taskfleet.results.backend import STORE_RESULT_LUA
from taskfleet.results.backlog import STATS_KEY
from taskfleet.results.persister import ResultPersister
from taskfleet.results.quarantine import QUARANTINE_KEY, Quarantine
from taskfleet.results.store import ensure_schema, make_engine, sqlalchemy_url
from taskfleet.results.stream import PERSIST_GROUP
from taskfleet.sandbox import namespaces_available
from tests.support.services import TEST_DATA_DIR, missing_service, private_stack
from tests.support.waiting import wait_for
from tests.support.workers import Fleet

OUTAGE_STACK_DIR = TEST_DATA_DIR.with_name(TEST_DATA_DIR.name + "-outage")
RESULT_TTL_S = 3600
SMALL_LIMIT = 4096
LAND_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def outage_stack() -> Iterator[tuple[EmbeddedStack, StackURLs]]:
    """A private Redis + Postgres pair whose Postgres tests stop and restart (same port)."""
    with private_stack(OUTAGE_STACK_DIR) as stack_and_urls:
        yield stack_and_urls


@pytest.fixture
def names(redis_client: redis.Redis) -> Iterator[tuple[str, str]]:
    """A private stream and quarantine key, deleted afterwards."""
    tag = uuid.uuid4().hex[:8]
    stream, quarantine = f"tfp-stream-{tag}", f"tfp-quarantine-{tag}"
    yield stream, quarantine
    redis_client.delete(stream, quarantine, quarantine + ":counts")


#: A Redis database no worker uses: a session fleet's persisters read the default stream on
#: the test Redis's own database and would land the oversize result with the default limit.
OWN_DB = 9


@pytest.fixture
def own_db(
    services: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[dict[str, str], redis.Redis]]:
    """The services, with Redis on :data:`OWN_DB` (for this process's CLI too), emptied."""
    parts = urlsplit(services["TASKFLEET_REDIS_URL"])
    url = urlunsplit(parts._replace(path=f"/{OWN_DB}"))
    env = {**services, "TASKFLEET_BROKER_URL": url, "TASKFLEET_REDIS_URL": url}
    for name in ("TASKFLEET_BROKER_URL", "TASKFLEET_REDIS_URL"):
        monkeypatch.setenv(name, url)
    get_settings.cache_clear()
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield env, client
    client.flushdb()
    client.close()
    monkeypatch.undo()
    get_settings.cache_clear()


def _app(services: dict[str, str]) -> Celery:
    return create_app(
        load_settings(**{k.removeprefix("TASKFLEET_").lower(): v for k, v in services.items()})
    )


def _store(client: redis.Redis, stream: str, task_id: str, meta_text: str) -> str:
    """Write a result as the backend does (the same script: key, publish, stream entry)."""
    key = f"celery-task-meta-{task_id}"
    client.register_script(STORE_RESULT_LUA)(keys=[key, stream], args=[meta_text, RESULT_TTL_S])
    return key


def _meta(task_id: str, result: Any) -> str:
    return json.dumps({"status": "SUCCESS", "result": result, "task_id": task_id})


def _row(engine: Engine, key: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT status, task_id, value, value_text FROM taskfleet_results WHERE key = :k"),
            {"k": key},
        ).first()


@pytest.mark.parametrize(
    "result",
    [{"out": "a\x00b"}, {"out": "lone \ud800 surrogate"}, {"big": [math.inf, -math.inf]}],
    ids=["nul", "lone-surrogate", "infinity"],
)
def test_json_that_jsonb_refuses_lands_as_text_and_reads_back_equal(
    services: dict[str, str], redis_client: redis.Redis, engine: Engine, result: Any
) -> None:
    writer = _app(services)
    task_id = f"poison-{uuid.uuid4()}"
    writer.backend.store_result(task_id, result, "SUCCESS")  # the real write path
    key = f"celery-task-meta-{task_id}"
    persister = ResultPersister(redis_client, engine, batch_size=50)
    wait_for(lambda: persister.drain() >= 0 and _row(engine, key), LAND_TIMEOUT_S, "the row")
    row = _row(engine, key)
    assert (row.status, row.task_id, row.value) == ("SUCCESS", task_id, None)
    assert row.value_text is not None
    assert persister.quarantined == 0
    redis_client.delete(key)  # Redis lost it: only Postgres has it now
    again = AsyncResult(task_id, app=_app(services))  # a fresh reader: nothing in its L1
    assert again.state == "SUCCESS"
    assert again.get(timeout=10) == result
    assert json.loads(redis_client.get(key) or b"")["result"] == result  # back-filled


def test_batch_with_bad_rows_lands_every_good_row_in_the_same_cycle(
    redis_client: redis.Redis,
    engine: Engine,
    names: tuple[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream, quarantine_key = names
    tag = uuid.uuid4().hex[:8]
    metas: dict[str, str] = {}
    for i in range(10):
        metas[f"good-{i}-{tag}"] = _meta(f"good-{i}-{tag}", {"i": i})
    metas[f"nul-{tag}"] = _meta(f"nul-{tag}", "a\x00b")  # goes as text directly
    metas[f"huge-number-{tag}"] = (  # jsonb: numeric out of range; stored as text
        f'{{"status": "SUCCESS", "task_id": "huge-number-{tag}", "result": 1e1000000}}'
    )
    metas[f"not-json-{tag}"] = '{"status": "SUCCESS", "result": '  # nothing can store it
    metas[f"oversize-{tag}"] = _meta(f"oversize-{tag}", "x" * SMALL_LIMIT)
    keys = {task_id: _store(redis_client, stream, task_id, meta) for task_id, meta in metas.items()}
    bad_utf8 = redis_client.xadd(stream, {"key": f"celery-task-meta-utf8-{tag}", "value": b"\xff"})
    no_value = redis_client.xadd(stream, {"key": f"celery-task-meta-novalue-{tag}"})
    persister = ResultPersister(
        redis_client,
        engine,
        stream=stream,
        quarantine_key=quarantine_key,
        max_bytes=SMALL_LIMIT,
        batch_size=100,
    )
    with caplog.at_level(logging.WARNING, logger="taskfleet.results.persister"):
        assert persister.step(full=True) == len(metas) + 2  # one cycle
        assert persister.drain() == 0
    landed = [t for t in metas if _row(engine, keys[t]) is not None]
    assert sorted(landed) == sorted(t for t in metas if not t.startswith(("not-json", "oversize")))
    assert _row(engine, keys[f"huge-number-{tag}"]).value_text is not None
    assert _row(engine, keys[f"good-3-{tag}"]).value == json.loads(metas[f"good-3-{tag}"])
    assert persister.written == len(landed)
    quarantine = Quarantine(redis_client, quarantine_key)
    records = {r.task_id: r for r in quarantine.records()}
    assert set(records) == {f"not-json-{tag}", f"oversize-{tag}", f"utf8-{tag}", f"novalue-{tag}"}
    assert {records[f"utf8-{tag}"].entry_id, records[f"novalue-{tag}"].entry_id} == {
        bad_utf8.decode(),
        no_value.decode(),
    }
    assert records[f"utf8-{tag}"].category == "malformed"
    assert redis_client.get(f"celery-task-meta-novalue-{tag}") is None  # nothing invented
    assert records[f"oversize-{tag}"].category == "oversize"
    assert "size limit of 4096 bytes" in records[f"oversize-{tag}"].reason
    assert records[f"not-json-{tag}"].category == "refused"
    assert "as text: JSONDecodeError" in records[f"not-json-{tag}"].reason
    assert quarantine.counts() == {"total": 4, "oversize": 1, "refused": 1, "malformed": 2}
    warnings = [r.getMessage() for r in caplog.records if "quarantined" in r.getMessage()]
    assert len(warnings) == 4  # one per poison result, not one per retry
    assert any(f"job oversize-{tag}" in w for w in warnings)
    assert redis_client.xlen(stream) == 0
    assert redis_client.xpending(stream, PERSIST_GROUP)["pending"] == 0
    redis_client.delete(*keys.values())


def test_oversize_result_is_quarantined_readable_counted_and_can_be_requeued(
    own_db: tuple[dict[str, str], redis.Redis], engine: Engine
) -> None:
    """On the default stream and quarantine, as the CLI sees them."""
    services, redis_client = own_db
    tag = uuid.uuid4().hex[:8]
    quarantine = Quarantine(redis_client, QUARANTINE_KEY)
    before = quarantine.counts().get("oversize", 0)
    big = {"blob": "y" * (2 * SMALL_LIMIT)}
    writer = _app(services)
    writer.backend.store_result(f"big-{tag}", big, "SUCCESS")
    writer.backend.store_result(f"after-{tag}", {"ok": True}, "SUCCESS")
    big_key, after_key = f"celery-task-meta-big-{tag}", f"celery-task-meta-after-{tag}"
    persister = ResultPersister(redis_client, engine, max_bytes=SMALL_LIMIT)
    wait_for(lambda: persister.drain() >= 0 and _row(engine, after_key), LAND_TIMEOUT_S, "after")
    assert _row(engine, big_key) is None
    assert quarantine.counts()["oversize"] == before + 1
    assert redis_client.ttl(big_key) == -1  # kept without expiry: outlives a normal result
    assert AsyncResult(f"big-{tag}", app=_app(services)).get(timeout=10) == big
    runner = CliRunner()
    listed = runner.invoke(cli, ["results", "quarantine", "list", "--json", "--limit", "10000"])
    assert listed.exit_code == 0, listed.output
    rows = [json.loads(line) for line in listed.output.splitlines()]
    mine = next(r for r in rows if r["key"] == big_key)
    assert (mine["task_id"], mine["category"]) == (f"big-{tag}", "oversize")
    status = runner.invoke(cli, ["results", "status", "--json"])
    assert status.exit_code == 0, status.output
    report = json.loads(status.output)
    assert report["counts"]["oversize"] >= 1
    assert {"length", "pending", "oldest_pending_age_s"} <= set(report["stream"])
    # The operator raises the limit and requeues it: it lands, its key expires again.
    requeued = runner.invoke(cli, ["results", "quarantine", "requeue", big_key])
    assert requeued.exit_code == 0, requeued.output
    roomy = ResultPersister(redis_client, engine)
    wait_for(lambda: roomy.drain() >= 0 and _row(engine, big_key), LAND_TIMEOUT_S, "requeued")
    assert _row(engine, big_key).value["result"] == big
    assert redis_client.ttl(big_key) > 0
    assert redis_client.hget(QUARANTINE_KEY, big_key) is None


def test_postgres_down_loses_nothing_retries_with_backoff_and_reports_backlog(
    outage_stack: tuple[EmbeddedStack, StackURLs],
    redis_client: redis.Redis,
    names: tuple[str, str],
) -> None:
    stack, urls = outage_stack
    stream, quarantine_key = names
    fault_engine = make_engine(urls.database_url, pool_size=1)
    tag = uuid.uuid4().hex[:8]
    count, cap = 50, 30
    persister = ResultPersister(
        redis_client,
        fault_engine,
        stream=stream,
        quarantine_key=quarantine_key,
        retry_delay_s=0.05,
        max_retry_delay_s=0.8,
        stream_maxlen=cap,
        batch_size=20,
    )
    near_cap_before = int(redis_client.hget(STATS_KEY, "near_cap") or 0)
    keys: list[str] = []
    try:
        stack.stop()  # Postgres refuses connections
        keys = [_store(redis_client, stream, f"out-{i}-{tag}", _meta(f"out-{i}-{tag}", i)) for i in range(count)]  # fmt: skip
        persister.start()
        wait_for(lambda: len(persister.retry_delays) >= 4, 30, "several retries")
        delays = list(persister.retry_delays)
        assert delays[3] > delays[0]  # backoff, not a busy loop
        health = persister.health()
        assert health.length <= cap  # the oldest went to the quarantine, not away
        assert health.pending > 0
        assert health.oldest_pending_age_s is not None
        assert "pending" in health.describe()
        assert int(redis_client.hget(STATS_KEY, "near_cap") or 0) > near_cap_before
        quarantine = Quarantine(redis_client, quarantine_key)
        assert quarantine.counts()["overflow"] == count - health.length
        assert all(redis_client.get(k) is not None for k in keys)  # every result readable
        assert all(redis_client.ttl(r.key) == -1 for r in quarantine.records())

        stack.ensure_running()  # Postgres back, same port

        def in_postgres() -> int:
            with fault_engine.connect() as conn:
                found = conn.execute(
                    text("SELECT count(*) FROM taskfleet_results WHERE key = ANY(:k)"),
                    {"k": keys},
                )
                return int(found.scalar_one())

        wait_for(lambda: persister.backlog() == 0, LAND_TIMEOUT_S, "the backlog to drain")
        assert in_postgres() == health.length
        done, missing = quarantine.requeue(stream)
        assert (done, missing) == (count - health.length, [])
        wait_for(lambda: in_postgres() == count, LAND_TIMEOUT_S, "every result in Postgres")
        assert quarantine.size() == 0
        assert persister.health().length == 0
    finally:
        persister.stop()
        stack.ensure_running()
        if keys:
            redis_client.delete(*keys)
        fault_engine.dispose()


@pytest.mark.timeout(180)
def test_sandbox_job_printing_nul_reaches_postgres_and_reads_back(
    redis_fleet: Fleet, redis_client: redis.Redis, engine: Engine
) -> None:
    """The reported case: ``sandbox.run`` printing ``a\\0b``, through real workers."""
    if not namespaces_available():
        missing_service("user/PID/net/mount namespaces for the sandbox", "not available")
    client = Client(redis_fleet.app())
    job = client.enqueue("sandbox.run", {"source": "print('a\\0b')", "stdin": None, "limits": {}})
    result = job.result(60)
    assert result["stdout"]["data"] == "a\x00b\n", result
    key = f"celery-task-meta-{job.id}"
    wait_for(lambda: _row(engine, key), LAND_TIMEOUT_S, "the worker's persister to land it")
    assert _row(engine, key).value_text is not None
    redis_client.delete(key)
    assert AsyncResult(job.id, app=redis_fleet.app()).get(timeout=10) == result
    assert redis_client.hget(QUARANTINE_KEY, key) is None


def test_cache_value_that_jsonb_refuses_lands_in_l3_and_reads_back(
    services: dict[str, str], engine: Engine, redis_client: redis.Redis, names: tuple[str, str]
) -> None:
    stream, quarantine_key = names
    cache = open_cache(
        ["memory://", services["TASKFLEET_REDIS_URL"], services["TASKFLEET_DATABASE_URL"]],
        load_cache_settings(namespace=f"tfp-{uuid.uuid4().hex[:8]}"),
        stream=stream,
        engine=engine,
        listen=False,
    )
    assert cache.l3 is not None
    try:
        cache.set_many({"nul": {"s": "a\x00b"}, "plain": {"s": "ab"}})
        persister = ResultPersister(
            redis_client, engine, stream=stream, quarantine_key=quarantine_key
        )
        assert persister.drain() == 2
        assert (persister.stored_as_text, persister.quarantined) == (1, 0)
        found = cache.l3.get_many(["nul", "plain"])
        assert {k: json.loads(v) for k, v in found.items()} == {
            "nul": {"s": "a\x00b"},
            "plain": {"s": "ab"},
        }
        cache.invalidate("nul")  # a tombstone clears the text form too
        persister.drain()
        assert cache.l3.get_many(["nul"]) == {}
    finally:
        cache.clear()
        cache.close()


def test_ensure_schema_upgrades_an_old_results_table_idempotently(
    services: dict[str, str], engine: Engine
) -> None:
    schema = f"tfp_old_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
        conn.execute(
            text(
                f"CREATE TABLE {schema}.taskfleet_results (key varchar PRIMARY KEY, "
                "task_id varchar, status varchar, value jsonb NOT NULL, "
                "created_at timestamptz NOT NULL DEFAULT now(), "
                "updated_at timestamptz NOT NULL DEFAULT now(), expires_at timestamptz)"
            )
        )
        conn.execute(
            text(f"INSERT INTO {schema}.taskfleet_results (key, value) VALUES ('old', '{{}}')")
        )
    old = create_engine(
        sqlalchemy_url(services["TASKFLEET_DATABASE_URL"]),
        connect_args={"options": f"-c search_path={schema}"},
    )
    try:
        ensure_schema(old)
        ensure_schema(old)  # a second time changes nothing and does not fail
        with old.connect() as conn:
            columns = dict(
                conn.execute(
                    text(
                        "SELECT column_name, is_nullable FROM information_schema.columns "
                        "WHERE table_schema = :s AND table_name = 'taskfleet_results'"
                    ),
                    {"s": schema},
                ).all()
            )
            kept = conn.execute(text("SELECT count(*) FROM taskfleet_results")).scalar_one()
        assert (columns["value"], columns["value_text"]) == ("YES", "YES")
        assert kept == 1
    finally:
        old.dispose()
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
