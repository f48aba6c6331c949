"""The messages taskfleet builds are the ones Celery itself reads (protocol v2, JSON)."""

from __future__ import annotations

import base64
import datetime
import json
import uuid
from typing import Any

import pytest

from taskfleet.routing.wire import (
    EMPTY_EMBED,
    SENT_AT_HEADER,
    EnvelopeTemplate,
    TaskMessage,
    encode_json,
    encode_single_arg_body,
    job_id_for,
    new_job_ids,
    next_delivery_tag,
)


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


# -- the batch path: body and envelope templates ----------------------------------------------
EXTRA = {"taskfleet_client_id": 'svc "a" 100% \u00e9'}


def _without_tag(envelope: bytes | str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(envelope)
    decoded["properties"].pop("delivery_tag")
    return decoded


@pytest.mark.parametrize(
    "payload",
    [None, {"job": 1, "pad": "x" * 200}, [1, 2**70], {"caf\u00e9": "\u00e9", "%s": "%d"}, {3: "k"}],
)
def test_single_arg_body_is_the_full_body_encoding(payload: Any) -> None:
    assert encode_single_arg_body(payload) == encode_json([[payload], {}, EMPTY_EMBED])


def test_single_arg_body_refuses_datetimes_by_name() -> None:
    with pytest.raises(TypeError, match="datetime"):
        encode_single_arg_body({"at": datetime.datetime(2026, 1, 1)})


@pytest.mark.parametrize("priority", [0, 2, 9])
@pytest.mark.parametrize("key", [None, 'order "42" %s', 17])
def test_template_renders_what_task_message_encodes(priority: int, key: str | int | None) -> None:
    payload = {"n": priority, "text": "%d \u00e9"}
    template = EnvelopeTemplate("cpu.noop", "cpu-q", priority, EXTRA, keyed=key is not None)
    sent_at = 1_780_000_000.123456
    stamped = template.stamped(sent_at)
    rendered = stamped.render("job-1", encode_single_arg_body(payload), key)  # type: ignore[arg-type]
    headers = {**EXTRA, SENT_AT_HEADER: sent_at}
    if key is not None:
        headers["taskfleet_idempotency_key"] = key
    reference = TaskMessage.build(
        "cpu.noop",
        [payload],
        {},
        job_id="job-1",
        priority=priority,
        queue="cpu-q",
        extra_headers=headers,
    )
    assert _without_tag(rendered) == _without_tag(reference.redis_envelope())
    assert json.loads(rendered)["headers"][SENT_AT_HEADER] == sent_at


def test_template_delivery_tags_are_unique_and_share_the_process_prefix() -> None:
    template = EnvelopeTemplate("cpu.noop", "cpu", 5, {}, keyed=False)
    body = encode_single_arg_body(None)
    tags = [json.loads(template.render("x", body))["properties"]["delivery_tag"] for _ in range(3)]
    tags.append(next_delivery_tag())
    assert len(set(tags)) == 4
    assert {tag.rsplit("-", 1)[0] for tag in tags} == {next_delivery_tag().rsplit("-", 1)[0]}


def test_new_job_ids_are_distinct_uuid4_strings() -> None:
    ids = new_job_ids(2000)
    assert len(set(ids)) == 2000
    for job_id in ids:
        parsed = uuid.UUID(job_id)
        assert str(parsed) == job_id
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_a_forked_process_gets_its_own_delivery_tags() -> None:
    import os

    from taskfleet.routing import wire

    parent_tag = wire.next_delivery_tag()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its first tag and leave without running pytest's exit
        os.write(write_end, wire.next_delivery_tag().encode())
        os._exit(0)
    os.close(write_end)
    child_tag = os.read(read_end, 200).decode()
    os.waitpid(pid, 0)
    assert child_tag.rsplit("-", 1)[0] != parent_tag.rsplit("-", 1)[0]
