"""Dead letters on a real fleet: failed jobs, poison messages, inspect and replay."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kombu import Connection

import taskfleet.resilience.testing_jobs  # noqa: F401 - the diag.* kinds, for the client
from taskfleet.client import Client, JobFailed
from taskfleet.config import load_settings
from taskfleet.resilience.diag_keys import DIAG_KEY_TTL_S, DIAG_PREFIX, counter_key
from taskfleet.resilience.dlq import DeadLetterQueues, replay_id_for, select
from taskfleet.routing.depth import queue_depths
from taskfleet.routing.wire import TaskMessage
from taskfleet.scheduler.store import LOCK_KEY
from taskfleet.workers.profiles import cpu_profile
from tests.support.services import delete_amqp_queues
from tests.support.waiting import wait_for
from tests.support.workers import DIAG_JOBS_ENV, Fleet

MAX_PAYLOAD = 4096
JOB_TIMEOUT_S = 30.0


def resilience_env(base: dict[str, str], tag: str) -> dict[str, str]:
    """Queues of their own (so session fleets of ``taskfleet.app`` never take diag jobs),
    and the ``diag.*`` jobs turned on."""
    suffix = uuid.uuid4().hex[:6]
    return {
        **base,
        **DIAG_JOBS_ENV,
        "TASKFLEET_CPU_QUEUE": f"cpu-{tag}-{suffix}",
        "TASKFLEET_IO_QUEUE": f"io-{tag}-{suffix}",
        "TASKFLEET_MAX_PAYLOAD_BYTES": str(MAX_PAYLOAD),
        "TASKFLEET_RESILIENCE_MAX_DELIVERIES": "2",
        "TASKFLEET_NO_PERSISTER": "1",
    }


def start_fleet(env: dict[str, str], log_dir: Path, cpu: int = 2) -> Fleet:
    """One prefork worker (``taskfleet.app`` carries the resilience layer and ``diag.*``)."""
    fleet = Fleet(env, log_dir)
    base = cpu_profile(load_settings(**fleet.settings_overrides), cpu)
    try:
        fleet.start(base, "cpu")
    except BaseException:
        fleet.stop()
        raise
    return fleet


@pytest.fixture(scope="module")
def fleet(redis_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A resilience fleet on the Redis broker."""
    running = start_fleet(resilience_env(redis_env, "res"), tmp_path_factory.mktemp("res"))
    try:
        yield running
    finally:
        running.stop()


def test_failures_end_as_dead_letters(fleet: Fleet, redis_client: redis.Redis) -> None:
    client = Client(fleet.app())
    dlqs = DeadLetterQueues(load_settings(**fleet.settings_overrides))
    counter = f"t:{uuid.uuid4().hex}"
    exhausted = client.enqueue("diag.always_fails", {"counter": counter + ":a"})
    wrong = client.enqueue("diag.wrong_error", {"counter": counter + ":w"})
    bad_args = fleet.app().send_task(
        "diag.echo", args=[1, 2, 3], queue=fleet.env["TASKFLEET_CPU_QUEUE"]
    )
    ok = client.enqueue("diag.flaky", {"counter": counter + ":f", "fail_times": 2})

    assert ok.result(JOB_TIMEOUT_S) == {"calls": 3}
    with pytest.raises(JobFailed, match="ConnectionError"):
        exhausted.result(JOB_TIMEOUT_S)
    with pytest.raises(JobFailed, match="KeyError"):
        wrong.result(JOB_TIMEOUT_S)
    wait_for(lambda: dlqs.show(bad_args.id), JOB_TIMEOUT_S, "bad-argument dead letter")

    assert int(redis_client.get(counter_key(counter + ":a")) or 0) == 3  # stop_after_attempt(3)
    assert int(redis_client.get(counter_key(counter + ":w")) or 0) == 1  # not retried
    by_id = {x.id: x for x in dlqs.list()}
    assert by_id[exhausted.id].reason == "retries_exhausted"
    assert by_id[exhausted.id].attempts == 3
    assert by_id[exhausted.id].exc_type == "ConnectionError"
    assert "Traceback" in by_id[exhausted.id].traceback
    assert by_id[wrong.id].reason == "non_retryable"
    assert by_id[bad_args.id].reason == "invalid_arguments"
    assert ok.id not in by_id
    body = json.loads(base64.b64decode(by_id[exhausted.id].message["body"]))
    assert body[0] == [{"counter": counter + ":a"}]
    with Connection(fleet.env["TASKFLEET_BROKER_URL"]) as conn:
        dlq = f"{fleet.env['TASKFLEET_CPU_QUEUE']}.dlq"
        assert queue_depths(conn, [dlq])[dlq] == len(
            dlqs.list(select(queue=by_id[exhausted.id].queue))
        )


def test_diag_keys_stay_under_their_prefix_and_expire(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    """A payload naming another key of the fleet (the autoscaler's lock) counts under the
    diag prefix, with a TTL: the lock is never touched, so it cannot be left without one."""
    client = Client(fleet.app())
    handle = client.enqueue("diag.wrong_error", {"counter": LOCK_KEY})
    with pytest.raises(JobFailed, match="KeyError"):
        handle.result(JOB_TIMEOUT_S)
    confined = counter_key(LOCK_KEY)
    assert confined.startswith(DIAG_PREFIX)
    assert int(redis_client.get(confined) or 0) >= 1
    assert 0 < redis_client.ttl(confined) <= DIAG_KEY_TTL_S
    assert redis_client.get(LOCK_KEY) != b"1"  # a lock's value is a token, never a count


def _push_raw(client: redis.Redis, queue: str, envelope: dict[str, object]) -> None:
    client.lpush(queue, json.dumps(envelope))


def _envelope(message: TaskMessage, **changes: object) -> dict[str, object]:
    envelope: dict[str, object] = json.loads(message.redis_envelope())
    envelope.update(changes)
    return envelope


def test_poison_messages_are_dead_lettered(fleet: Fleet, redis_client: redis.Redis) -> None:
    queue = fleet.env["TASKFLEET_CPU_QUEUE"]
    dlqs = DeadLetterQueues(load_settings(**fleet.settings_overrides))

    def msg(kind: str, payload: object) -> TaskMessage:
        return TaskMessage.build(
            kind, [payload], {}, job_id=str(uuid.uuid4()), priority=0, queue=queue
        )

    unknown = msg("diag.no_such_task", 1)
    pickled = msg("diag.echo", 1)
    garbage = msg("diag.echo", 1)
    oversize = msg("diag.echo", "x" * (MAX_PAYLOAD + 100))
    _push_raw(redis_client, queue, _envelope(unknown))
    _push_raw(
        redis_client,
        queue,
        _envelope(
            pickled,
            **{
                "content-type": "application/x-python-serialize",
                "body": base64.b64encode(b"\x80\x04K\x01.").decode(),
            },
        ),
    )
    _push_raw(redis_client, queue, _envelope(garbage, body=base64.b64encode(b"{not json").decode()))
    _push_raw(redis_client, queue, _envelope(oversize))
    expected = {
        unknown.job_id: "unknown_task",
        pickled.job_id: "content_disallowed",
        garbage.job_id: "malformed",
        oversize.job_id: "oversize",
    }

    def reasons() -> dict[str, str]:
        return {x.id: x.reason for x in dlqs.list() if x.id in expected}

    got = wait_for(lambda: len(reasons()) == 4 and reasons(), JOB_TIMEOUT_S, "4 poison letters")
    assert got == expected
    letter = dlqs.show(pickled.job_id)
    assert letter is not None
    assert letter.message["content-type"] == "application/x-python-serialize"
    assert letter.message["headers"]["task"] == "diag.echo"


def test_replay_links_and_never_duplicates(fleet: Fleet, redis_client: redis.Redis) -> None:
    client = Client(fleet.app())
    dlqs = DeadLetterQueues(load_settings(**fleet.settings_overrides))
    counter = f"t:replay:{uuid.uuid4().hex}"
    handle = client.enqueue("diag.wrong_error", {"counter": counter})
    with pytest.raises(JobFailed):
        handle.result(JOB_TIMEOUT_S)
    assert dlqs.show(handle.id) is not None
    # Replay the echo job built from the dead letter twice: the second replay is a no-op.
    first = dlqs.replay(select(ids=[handle.id]))
    assert first.replayed == {handle.id: replay_id_for(handle.id)}
    assert dlqs.show(handle.id) is None
    new_id = first.replayed[handle.id]
    wait_for(lambda: dlqs.show(new_id), JOB_TIMEOUT_S, "the replay to die again")
    again = dlqs.show(new_id)
    assert again is not None
    assert again.replay_of == handle.id
    assert int(redis_client.get(counter_key(counter)) or 0) == 2
    # A dead letter whose job (under its replay id) already succeeded is not replayed.
    redis_client.set(f"celery-task-meta-{replay_id_for(new_id)}", json.dumps({"status": "SUCCESS"}))
    second = dlqs.replay(select(ids=[new_id]))
    assert second.replayed == {}
    assert second.already_succeeded == [new_id]


@pytest.mark.rabbitmq
@pytest.mark.timeout(120)
def test_rabbitmq_dead_letters_through_the_dlx(
    amqp_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    env = resilience_env(amqp_env, "amqp")
    fleet = start_fleet(env, tmp_path_factory.mktemp("res-amqp"), cpu=1)
    try:
        client = Client(fleet.app())
        dlqs = DeadLetterQueues(load_settings(**fleet.settings_overrides))
        handle = client.enqueue("diag.wrong_error", {})
        with pytest.raises(JobFailed, match="non_retryable"):
            handle.result(JOB_TIMEOUT_S)
        dlq = f"{env['TASKFLEET_CPU_QUEUE']}.dlq"
        with Connection(env["TASKFLEET_BROKER_URL"]) as conn:
            wait_for(lambda: queue_depths(conn, [dlq])[dlq] == 1, JOB_TIMEOUT_S, "the DLX copy")
        letter = dlqs.show(handle.id)
        assert letter is not None
        assert letter.reason == "non_retryable"
        assert letter.exc_type == "KeyError"
        report = dlqs.replay(select(ids=[handle.id]))
        assert report.replayed == {handle.id: replay_id_for(handle.id)}
        with Connection(env["TASKFLEET_BROKER_URL"]) as conn:
            # The replay dies again: its own copy arrives, the original's was removed.
            wait_for(lambda: dlqs.show(replay_id_for(handle.id)), JOB_TIMEOUT_S, "replay death")
            wait_for(lambda: queue_depths(conn, [dlq])[dlq] == 1, JOB_TIMEOUT_S, "one copy")
    finally:
        fleet.stop()
        delete_amqp_queues(env)
