"""The publisher registry: one publisher per broker scheme, picked in one place."""

from __future__ import annotations

import os

import pytest

from taskfleet.config.settings import AMQP_SCHEMES, REDIS_SCHEMES
from taskfleet.publishing import (
    ASYNC_PUBLISHERS,
    PUBLISHERS,
    PublisherConfig,
    async_publisher_for,
    publisher_for,
)
from taskfleet.publishing.amqp import AmqpPublisher
from taskfleet.publishing.base import extra_headers
from taskfleet.publishing.redis import AsyncRedisPublisher, RedisPublisher, _template
from taskfleet.routing.topology import Topology

#: Nothing listens here: building a publisher must not connect.
UNUSED = "127.0.0.1:1"


def _config(broker_url: str) -> PublisherConfig:
    return PublisherConfig(
        broker_url=broker_url,
        redis_url=f"redis://{UNUSED}/0",
        topology=Topology("cpu", "io", ".dlq", amqp=False),
        claim_ttl_s=60,
        claim_window_s=1.0,
    )


def test_every_broker_scheme_has_its_publisher() -> None:
    assert set(PUBLISHERS) == REDIS_SCHEMES | AMQP_SCHEMES
    assert {PUBLISHERS[s] for s in REDIS_SCHEMES} == {RedisPublisher}
    assert {PUBLISHERS[s] for s in AMQP_SCHEMES} == {AmqpPublisher}
    assert set(ASYNC_PUBLISHERS) == REDIS_SCHEMES  # RabbitMQ: the sync one, in a thread


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"redis://{UNUSED}/0", RedisPublisher),
        (f"REDISS://{UNUSED}/0", RedisPublisher),
        (f"amqp://guest:guest@{UNUSED}//", AmqpPublisher),
        (f"pyamqp://guest:guest@{UNUSED}//", AmqpPublisher),
    ],
)
def test_the_scheme_picks_the_publisher(url: str, expected: type) -> None:
    publisher = publisher_for(_config(url))
    assert type(publisher) is expected
    publisher.close()


def test_an_unknown_scheme_is_named() -> None:
    with pytest.raises(ValueError, match=r"'sqs'.*amqp.*redis"):
        publisher_for(_config(f"sqs://{UNUSED}"))


def test_async_publisher_only_where_native() -> None:
    assert isinstance(async_publisher_for(_config(f"redis://{UNUSED}/0")), AsyncRedisPublisher)
    assert async_publisher_for(_config(f"amqp://{UNUSED}//")) is None


def test_extra_headers_in_the_order_celery_messages_carry_them() -> None:
    assert extra_headers(None) == {}
    assert list(extra_headers("me", "k")) == ["taskfleet_client_id", "taskfleet_idempotency_key"]


def test_a_forked_child_builds_its_own_envelope_templates() -> None:
    """A template holds its process's delivery-tag prefix; a child has a new one."""
    _template("cpu.noop", "cpu", 5, None, False)
    assert _template.cache_info().currsize > 0
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only with an empty cache
        os._exit(0 if _template.cache_info().currsize == 0 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_both_publishers_stamp_the_publish_time() -> None:
    import json
    import time

    from taskfleet.publishing.amqp import task_messages
    from taskfleet.publishing.base import PreparedJobs
    from taskfleet.publishing.redis import encode
    from taskfleet.routing.wire import SENT_AT_HEADER, encode_single_arg_body

    body = encode_single_arg_body(None)
    jobs = PreparedJobs(
        ["cpu.noop", "cpu.noop"], ["a", "b"], [body, body], [5, 5], ["cpu", "cpu"], [None, "k"]
    )
    before = time.time()
    envelopes = encode(jobs, "me").envelopes
    messages = task_messages(jobs, "me")
    after = time.time()
    stamps = [json.loads(e)["headers"][SENT_AT_HEADER] for e in envelopes]
    stamps += [m.headers[SENT_AT_HEADER] for m in messages]
    assert all(before - 1e-6 <= stamp <= after + 1e-6 for stamp in stamps)
