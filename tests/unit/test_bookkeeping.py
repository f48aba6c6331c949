"""The transport's bookkeeping helpers: its own Redis packing and the reply-skipping probe."""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest
import redis
from redis.connection import Connection

from taskfleet.results.late_replies import packed
from taskfleet.routing.reply_skip import (
    SKIP_NEXT_REPLY,
    known_to_skip_replies,
    skips_replies,
    without_replies,
)

COMMANDS = [
    ("ZADD", "unacked_index", 1763921000.123456, "3f1c-tag"),
    ("HSET", "unacked", "3f1c-tag", '["{\\"body\\": \\"é\\"}", "", "cpu"]'),
    ("ZREM", "unacked_index", b"tag-1", "tag-2"),
    ("HDEL", "unacked", b"tag-1", "tag-2"),
    ("BRPOP", "q", 1),
]


def _redis_py_pack(commands: list[tuple[Any, ...]]) -> list[bytes]:
    packed: list[bytes] = Connection().pack_commands(commands)  # type: ignore[no-untyped-call]
    return packed


def test_packing_matches_redis_py_byte_for_byte() -> None:
    interleaved = [part for command in COMMANDS for part in (SKIP_NEXT_REPLY, command)]
    assert without_replies(COMMANDS) == b"".join(_redis_py_pack(interleaved))


def test_plain_packing_matches_redis_py_byte_for_byte() -> None:
    assert packed(COMMANDS) == b"".join(_redis_py_pack(COMMANDS))


def test_nothing_to_pack_is_empty() -> None:
    assert without_replies([]) == b""


class ScriptedConnection:
    """Answers the probe the way a server that does, or does not, know CLIENT REPLY would."""

    def __init__(self, replies: list[Any]) -> None:
        self.replies = deque(replies)
        self.sent: list[bytes] = []

    def pack_commands(self, commands: list[tuple[Any, ...]]) -> list[bytes]:
        return _redis_py_pack(commands)

    def send_packed_command(self, packed: list[bytes]) -> None:
        self.sent.extend(packed)

    def read_response(self) -> Any:
        reply = self.replies.popleft()
        if isinstance(reply, Exception):
            raise reply
        return reply


def test_a_server_that_skips_answers_only_the_last_echo() -> None:
    connection = ScriptedConnection([b"taskfleet-reply-skip-probe-2"])
    assert skips_replies(connection)
    assert known_to_skip_replies(connection)
    assert not connection.replies


def test_a_server_without_client_reply_is_read_in_step_and_remembered() -> None:
    unknown = redis.ResponseError("ERR unknown subcommand 'REPLY'")
    connection = ScriptedConnection([unknown, b"probe-1", b"probe-2"])
    assert not skips_replies(connection)
    assert not connection.replies  # all three replies consumed: the connection stays in step
    sent = len(connection.sent)
    assert not skips_replies(connection)  # remembered: no second probe
    assert len(connection.sent) == sent
    assert not known_to_skip_replies(connection)


@pytest.mark.parametrize("flag", [None, False])
def test_only_a_probed_connection_is_known_to_skip(flag: bool | None) -> None:
    connection = ScriptedConnection([])
    if flag is not None:
        connection._taskfleet_skips_replies = flag  # type: ignore[attr-defined]
    assert not known_to_skip_replies(connection)
