"""The messages taskfleet builds are the ones Celery itself reads (protocol v2, JSON)."""

from __future__ import annotations

import base64
import json

from taskfleet.routing.wire import TaskMessage, job_id_for


def test_idempotency_key_gives_a_stable_id_per_kind() -> None:
    assert job_id_for("cpu.noop", "k1") == job_id_for("cpu.noop", "k1")
    assert job_id_for("cpu.noop", "k1") != job_id_for("io.noop", "k1")
    assert job_id_for("cpu.noop", None) != job_id_for("cpu.noop", None)


def test_redis_envelope_matches_kombu_layout() -> None:
    message = TaskMessage.build(
        "cpu.checksum", [{"rounds": 2}], {}, job_id="abc", priority=7, queue="cpu"
    )
    envelope = json.loads(message.redis_envelope())
    assert envelope["content-type"] == "application/json"
    props = envelope["properties"]
    assert props["priority"] == 7
    assert props["delivery_info"] == {"exchange": "cpu", "routing_key": "cpu"}
    assert props["body_encoding"] == "base64"
    assert envelope["headers"]["task"] == "cpu.checksum"
    assert envelope["headers"]["id"] == "abc"
    args, kwargs, embed = json.loads(base64.b64decode(envelope["body"]))
    assert args == [{"rounds": 2}]
    assert kwargs == {}
    assert set(embed) == {"callbacks", "errbacks", "chain", "chord"}


def test_celery_decodes_the_body() -> None:
    from kombu.serialization import loads

    message = TaskMessage.build("io.noop", [None], {}, job_id="x", priority=5, queue="io")
    args, kwargs, _ = loads(message.body, "application/json", "utf-8", accept={"application/json"})
    assert args == [None]
    assert kwargs == {}
