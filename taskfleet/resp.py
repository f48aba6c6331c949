"""A minimal Redis client for the heartbeat sidecar: a few pipelined commands, stdlib only.

The sidecar (``taskfleet.sidecar``) runs next to every worker for its whole life, so its size
counts: after ``import redis`` a process holds ~35 MiB of its own (USS, measured with
redis-py 8.2), against ~3 MiB for the bare interpreter. It needs only to send a handful of
commands and read their RESP2 replies, which this does. URLs with query options (TLS
settings, timeouts) fall back to redis-py (:func:`connect`).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_PORT = 6379
PLAIN_SCHEMES = frozenset({"redis", "rediss", "unix", "socket"})


class ReplyError(Exception):
    """An error reply (``-ERR ...``), returned in place of the command's reply."""


class Client(Protocol):
    """Sends commands in one write and returns their replies (errors as values)."""

    def execute(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Replies in order; raises ``OSError`` (or redis-py's) when the link breaks."""
        ...


def _encode(arg: Any) -> bytes:
    data = arg if isinstance(arg, bytes) else str(arg).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


class MiniRedis:
    """One connection to the Redis at ``url`` (``redis://``, ``rediss://``, ``unix://``)."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url, self.timeout = url, timeout
        self._sock: socket.socket | None = None
        self._reader: Any = None

    def execute(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send every command in one write; read every reply. A broken link closes it."""
        payload = b"".join(
            b"*%d\r\n%s" % (len(c), b"".join(_encode(a) for a in c)) for c in commands
        )
        try:
            if self._sock is None:
                self._connect()
            assert self._sock is not None
            self._sock.sendall(payload)
            return [self._read() for _ in commands]
        except (OSError, EOFError):
            self.close()
            raise

    def close(self) -> None:
        """Drop the connection (the next command opens a new one)."""
        sock, self._sock, self._reader = self._sock, None, None
        if sock is not None:
            sock.close()

    def _connect(self) -> None:
        parts = urlsplit(self.url)
        query = parse_qs(parts.query)
        if parts.scheme in ("unix", "socket"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            sock.connect(parts.path)
            db = int(query.get("db", ["0"])[0])
        else:
            address = (parts.hostname or "127.0.0.1", parts.port or DEFAULT_PORT)
            sock = socket.create_connection(address, self.timeout)
            if parts.scheme == "rediss":
                import ssl

                context = ssl.create_default_context()
                sock = context.wrap_socket(sock, server_hostname=address[0])
            db = int(parts.path.strip("/") or 0)
        self._sock, self._reader = sock, sock.makefile("rb")
        setup: list[list[Any]] = []
        if parts.password:
            user = [unquote(parts.username)] if parts.username else []
            setup.append(["AUTH", *user, unquote(parts.password)])
        if db:
            setup.append(["SELECT", db])
        for reply in self.execute(setup) if setup else []:
            if isinstance(reply, ReplyError):
                raise ConnectionError(f"Redis refused the sidecar's connection: {reply}")

    def _read(self) -> Any:
        line = self._reader.readline()
        if not line.endswith(b"\r\n"):
            raise EOFError("connection closed by Redis")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest
        if kind == b"-":
            return ReplyError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._reader.read(size + 2)[:-2]
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._read() for _ in range(size)]
        raise EOFError(f"unexpected reply from Redis: {line[:40]!r}")


class _RedisPy:
    """redis-py behind the same interface, for URLs :class:`MiniRedis` does not read."""

    def __init__(self, url: str, timeout: float) -> None:
        import redis

        self._client = redis.Redis.from_url(url, socket_timeout=timeout)

    def execute(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        pipe: Any = self._client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(pipe.execute(raise_on_error=False))


def connect(url: str, timeout: float) -> Client:
    """A client for ``url``: :class:`MiniRedis` when it reads the URL, else redis-py."""
    parts = urlsplit(url)
    plain_query = not parts.query or set(parse_qs(parts.query)) <= {"db"}
    if parts.scheme in PLAIN_SCHEMES and plain_query:
        return MiniRedis(url, timeout)
    return _RedisPy(url, timeout)
