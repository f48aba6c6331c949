"""A Redis connection whose writes go out now and whose replies are read later.

Two hot paths send writes they do not need answered before moving on: the transport's
unacked bookkeeping in the prefork parent (``taskfleet.routing.bookkeeping``) and the result
writes of pool processes (``taskfleet.results.pipelining``). redis-py pipelines always wait for
their replies, hence a raw connection from the caller's pool, read back when convenient.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis

Command = tuple[Any, ...]

#: Longest wait for an owed reply before the link counts as broken (never hang a worker).
REPLY_TIMEOUT_S = 10.0
LINK_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


def _bulk(arg: Any) -> bytes:
    data = arg if isinstance(arg, bytes) else (arg if isinstance(arg, str) else repr(arg)).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def packed(commands: Iterable[Command]) -> bytes:
    """``commands`` in the Redis protocol, in one buffer.

    Packed here rather than by redis-py: its pure-Python packer cost the prefork parent more
    than the write it saves (~40 us for a job's bookkeeping, against ~5 us here). Arguments
    are bytes, str (UTF-8) or numbers (``repr``, as redis-py does).
    """
    return b"".join(
        b"*%d\r\n%s" % (len(command), b"".join(map(_bulk, command))) for command in commands
    )


class LateReplies:
    """One raw connection of ``pool``; remembers how many replies it still owes."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self._connection: Any = None
        self._owed = 0

    @property
    def owed(self) -> int:
        """Replies sent for and not read yet."""
        return self._owed

    def send(self, packed: list[bytes], replies: int) -> None:
        """Write already packed commands that will answer ``replies`` times.

        Raises:
            redis.ConnectionError: The link is broken (the connection is dropped).
        """
        if self._connection is None:
            connection: Any = self.pool.make_connection()
            connection.socket_timeout = REPLY_TIMEOUT_S
            self._connection, self._owed = connection, 0
        try:
            self._connection.send_packed_command(packed)
        except LINK_ERRORS:
            self.drop()
            raise
        self._owed += replies

    def collect(self) -> list[Any]:
        """Read every owed reply, in order: a value, or the error that stood for it.

        A broken link drops the connection and stands for every reply not read.
        """
        owed, self._owed = self._owed, 0
        replies: list[Any] = []
        connection = self._connection
        for _ in range(owed):
            if connection is None or connection._sock is None:
                replies.append(redis.ConnectionError("connection closed before its reply"))
                continue
            try:
                replies.append(connection.read_response())
            except redis.ResponseError as exc:
                replies.append(exc)
            except LINK_ERRORS as exc:
                self.drop()
                connection = None
                replies.append(exc)
        return replies

    def drop(self) -> None:
        """Close the connection; owed replies are lost (:meth:`collect` reports them)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.disconnect()
