"""``CLIENT REPLY SKIP``: writes that ride in front of a fetch without answering.

taskfleet's transport sends its unacked bookkeeping (and the tracking switches of atomic
fetch) in the same write as a fetch, each command preceded by ``CLIENT REPLY SKIP``, so the
fetch's reply is the only one on the connection (an early reply would wake the event loop
for nothing). Whether a server honours it is probed once per connection.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import redis

from taskfleet.results.late_replies import Command, packed

log = logging.getLogger(__name__)

SKIP_NEXT_REPLY: Command = ("CLIENT", "REPLY", "SKIP")
_PROBE_FIRST = b"taskfleet-reply-skip-probe-1"
_PROBE_LAST = b"taskfleet-reply-skip-probe-2"
_SKIP_FLAG = "_taskfleet_skips_replies"


_SKIP_BYTES = packed([SKIP_NEXT_REPLY])


def without_replies(commands: Iterable[Command]) -> bytes:
    """``commands`` in the Redis protocol, each preceded by ``CLIENT REPLY SKIP``."""
    return b"".join(_SKIP_BYTES + packed([command]) for command in commands)


def skips_replies(connection: Any) -> bool:
    """Whether the server behind an idle ``connection`` honours ``CLIENT REPLY SKIP``.

    Probed once per connection object (a reconnect reaches the same server): a server that
    skips answers only the second ECHO; one that does not answers the CLIENT command with an
    error, then both ECHOs, which are read so the connection stays in step.
    """
    known = getattr(connection, _SKIP_FLAG, None)
    if known is not None:
        return bool(known)
    probe = [SKIP_NEXT_REPLY, ("ECHO", _PROBE_FIRST), ("ECHO", _PROBE_LAST)]
    connection.send_packed_command(connection.pack_commands(probe))
    try:
        supported = bool(connection.read_response() == _PROBE_LAST)
    except redis.ResponseError:
        connection.read_response()
        connection.read_response()
        supported = False
    setattr(connection, _SKIP_FLAG, supported)
    if not supported:
        log.info("Redis has no CLIENT REPLY SKIP: unacked records use a second connection")
    return supported


def known_to_skip_replies(connection: Any) -> bool:
    """Whether ``connection`` was probed and its server skips replies (never probes)."""
    flag: object = getattr(connection, _SKIP_FLAG, None)
    return flag is True
