"""Watching (and stopping) the test process's connections, and a resolver the test controls.

Tests of the outbound policy must show that a refused address is never connected to, without
ever sending a packet anywhere but loopback:

* :func:`connections` records every ``socket.connect`` of this process while it is active
  (a Python audit hook), and blocks any to an address that is not loopback: a policy that
  fails lets the test fail, not a packet out.
* :func:`fake_dns` answers the names a test gives with the addresses it gives, passes address
  literals through, and refuses every other name: no query leaves the machine either.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

AUDIT_EVENT = "socket.connect"


class NonLoopbackConnect(RuntimeError):
    """A test process tried to connect to an address that is not loopback (blocked)."""


class _Watch:
    """The one audit hook of this process (audit hooks cannot be removed), and its state."""

    def __init__(self) -> None:
        self.active: list[list[str]] = []
        sys.addaudithook(self.hook)

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if event != AUDIT_EVENT or not self.active:
            return
        address = args[1]
        host = str(address[0]) if isinstance(address, tuple) else str(address)
        for record in self.active:
            record.append(host)
        try:
            loopback = ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
        except ValueError:
            loopback = False  # a Unix socket path or a name: not expected here either
        if not loopback:
            raise NonLoopbackConnect(f"blocked a connection to {address!r}")


_watch: _Watch | None = None


@contextmanager
def connections() -> Iterator[list[str]]:
    """The hosts this process connects to within the block (non-loopback ones blocked)."""
    global _watch
    if _watch is None:
        _watch = _Watch()
    record: list[str] = []
    _watch.active.append(record)
    try:
        yield record
    finally:
        _watch.active.remove(record)


def _sockaddr(address: str, port: int) -> tuple[Any, ...]:
    ip = ipaddress.ip_address(address)
    if ip.version == 6:
        return (address, port, 0, 0)
    return (address, port)


def fake_dns(
    monkeypatch: pytest.MonkeyPatch, names: dict[str, list[str] | Callable[[], list[str]]]
) -> list[str]:
    """Answer ``names`` (name -> addresses, or a function giving them per lookup).

    Returns the list of names looked up (in order), for tests that count lookups.
    """
    real = socket.getaddrinfo
    looked_up: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        name = host.decode() if isinstance(host, bytes) else str(host)
        try:
            ipaddress.ip_address(name.split("%", 1)[0])
        except ValueError:
            pass
        else:
            return real(host, port, *args, **kwargs)  # a literal: no query
        looked_up.append(name)
        answer = names.get(name.lower().rstrip("."))
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, f"{name}: not a test name")
        addresses = answer() if callable(answer) else answer
        number = int(port or 0)
        return [
            (
                socket.AF_INET6 if ipaddress.ip_address(a).version == 6 else socket.AF_INET,
                socket.SOCK_STREAM,
                socket.IPPROTO_TCP,
                "",
                _sockaddr(a, number),
            )
            for a in addresses
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return looked_up
