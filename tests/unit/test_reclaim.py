"""Fast recovery's parts that need no services: settings, owners, kombu's restore, the
sidecar's Redis client and its key templates."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from typing import Any

import kombu
import pytest
import redis
from celery import Celery

from taskfleet.config.resilience import load_resilience_settings
from taskfleet.config.settings import ConfigError
from taskfleet.resp import MiniRedis, ReplyError, connect
from taskfleet.routing import owners
from taskfleet.routing.reclaim import Reclaimer
from taskfleet.routing.transport import ALL_PRIORITY_STEPS, TRANSPORT_PATH
from taskfleet.workers.heartbeat import OWNER_SLOT, sidecar_config


@pytest.mark.usefixtures("clean_env")
def test_heartbeat_defaults_and_a_ttl_too_short_for_its_interval() -> None:
    settings = load_resilience_settings()
    assert settings.heartbeat_ttl >= 2 * settings.heartbeat_interval
    assert settings.reclaim_interval < settings.heartbeat_ttl
    with pytest.raises(ConfigError, match="TASKFLEET_RESILIENCE_HEARTBEAT_TTL"):
        load_resilience_settings(heartbeat_interval=2, heartbeat_ttl=3)


def test_a_forked_child_has_no_owner() -> None:
    owner = owners.claim(owners.new_owner_id())
    try:
        assert owners.current() == owner
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # a prefork pool process: never records deliveries as the worker's
            os.write(write, b"none" if owners.current() is None else b"some")
            os._exit(0)
        os.waitpid(pid, 0)
        assert os.read(read, 4) == b"none"
    finally:
        owners.release()
    assert owners.current() is None


@pytest.fixture
def offline_channel(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """taskfleet's Redis channel, configured like a worker's, never connected."""
    monkeypatch.setattr(redis.Redis, "ping", lambda self, **_: True)
    options = {"priority_steps": ALL_PRIORITY_STEPS, "queue_order_strategy": "priority"}
    connection = kombu.Connection(
        "redis://127.0.0.1:1/0", transport=TRANSPORT_PATH, transport_options=options
    )
    channel = connection.channel()
    yield channel
    channel.client.connection = None
    connection.release()


@pytest.mark.parametrize("priority", [0, 7])
def test_restored_messages_are_kombus_own(offline_channel: Any, priority: int) -> None:
    """The reclaimer pushes what kombu's restore pushes: marked redelivered, on the message's
    priority sub-list, on the side BRPOP takes (kombu's ``pipe.rpush`` when not leftmost)."""
    reclaimer = Reclaimer(offline_channel, client=redis.Redis(host="127.0.0.1", port=1))
    payload = {
        "body": "e30=",
        "headers": {},
        "properties": {"priority": priority, "delivery_info": {}, "delivery_tag": "t"},
    }
    record = json.dumps([payload, "", "q"]).encode()  # no exchange: routed to "q" itself
    [(command, key, body)] = reclaimer._pushes(b"t", record)
    assert command == "RPUSH"
    assert key == ("q" if priority == 0 else f"q\x06\x16{priority}")
    restored = json.loads(body)
    assert restored["headers"]["redelivered"] is True
    assert restored["properties"]["delivery_info"]["redelivered"] is True


def test_an_unreadable_record_is_left_for_the_visibility_timeout(offline_channel: Any) -> None:
    reclaimer = Reclaimer(offline_channel, client=redis.Redis(host="127.0.0.1", port=1))
    assert reclaimer._pushes(b"t", b"not json") == []


def _replies(raw: bytes) -> MiniRedis:
    client = MiniRedis("redis://127.0.0.1:1/0", 1.0)
    client._reader = io.BytesIO(raw)
    return client


def test_the_sidecar_client_reads_every_resp2_reply() -> None:
    client = _replies(b"+OK\r\n:3\r\n$5\r\nab\r\nc\r\n$-1\r\n*2\r\n$1\r\na\r\n:1\r\n-ERR no\r\n")
    assert client._read() == b"OK"
    assert client._read() == 3
    assert client._read() == b"ab\r\nc"  # bulk strings are read by length, not by line
    assert client._read() is None
    assert client._read() == [b"a", 1]
    error = client._read()
    assert isinstance(error, ReplyError)
    assert str(error) == "ERR no"


def test_a_closed_connection_is_an_error_not_an_empty_reply() -> None:
    with pytest.raises(EOFError):
        _replies(b"")._read()


@pytest.mark.parametrize(
    ("url", "mini"),
    [
        ("redis://127.0.0.1:6379/0", True),
        ("rediss://:secret@host:6380/2", True),
        ("unix:///tmp/redis.sock?db=1", True),
        ("redis://127.0.0.1:6379/0?socket_timeout=3", False),
    ],
)
def test_urls_the_sidecar_cannot_read_go_to_redis_py(url: str, mini: bool) -> None:
    assert isinstance(connect(url, 1.0), MiniRedis) is mini


def test_the_sidecars_key_templates_name_the_owners_keys() -> None:
    app = Celery("t", broker="redis://127.0.0.1:1/0")
    app.conf.broker_transport_options = {"unacked_key": "u"}
    config = sidecar_config(app, "me", 2.0, 8.0, 1.5)
    assert config["registry_key"] == owners.registry_key("u")
    for kind, key_of in (("alive", owners.alive_key), ("tags", owners.tags_key)):
        assert config[f"{kind}_key"].replace(OWNER_SLOT, "x") == key_of("x")
    assert config["parent"] == os.getpid()


def test_redis_uptime_is_read_from_either_clients_info_reply() -> None:
    from taskfleet.sidecar import _uptime

    assert _uptime(b"# Server\r\nredis_version:7.2.4\r\nuptime_in_seconds:42\r\n") == 42
    assert _uptime({"uptime_in_seconds": 7}) == 7
    assert _uptime(b"# Server\r\n") == float("inf")
