"""An httpx transport that vets every connection's address, and connects to that address.

httpx resolves a host inside ``socket.create_connection``, too late to look at the address.
Here the check sits in the transport's network backend, the one place every connection
passes through: for each new connection (the first request's, each redirect hop's, a
reconnect's) :func:`~taskfleet.outbound.policy.vet` resolves the URL's host once and checks
every address, and the socket is opened to a vetted address, not to the name, so nothing
can re-resolve it differently in between. TLS is started by httpcore afterwards with the
URL's host name, so SNI, certificate checks and the ``Host`` header are those of the name
asked for; connections are pooled by that name.

A refusal raises :class:`~taskfleet.outbound.policy.OutboundRefused` before any socket
connects; a name that does not resolve is an ordinary connect error.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable

import httpcore
import httpx

from taskfleet.config.exposure import OutboundAllow, get_exposure_settings
from taskfleet.outbound.policy import OutboundRefused, vet

#: Addresses of one host tried, in resolver order, before the connection fails.
MAX_ADDRESSES_TRIED = 3
#: Redirect hops a client that follows redirects takes at most (each one vetted).
MAX_REDIRECTS = 3
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)

SocketOption = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)


class GuardedBackend(httpcore.NetworkBackend):
    """httpcore's synchronous backend behind the address policy.

    Attributes:
        allow: What the allowlist opens.
        inner: The backend that opens the sockets (httpcore's ``SyncBackend``; gevent's
            patched sockets on the I/O pool).
    """

    def __init__(self, allow: OutboundAllow, inner: httpcore.NetworkBackend | None = None) -> None:
        self.allow = allow
        self.inner = inner or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.NetworkStream:
        """Resolve and vet ``host``, then connect to its first reachable vetted address.

        Raises:
            OutboundRefused: an address of ``host`` is refused (nothing was connected).
            httpcore.ConnectError: ``host`` does not resolve, or no address answers.
        """
        try:
            addresses = vet(host, port, self.allow)
        except (socket.gaierror, UnicodeError) as exc:
            raise httpcore.ConnectError(f"{host!r} does not resolve: {exc}") from None
        options = list(socket_options or ())
        failure: Exception | None = None
        for address in addresses[:MAX_ADDRESSES_TRIED]:
            try:
                return self.inner.connect_tcp(address, port, timeout, local_address, options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # vet() returns at least one address
        raise failure

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.NetworkStream:
        """Refused: a Unix socket is a local service, never an outbound destination."""
        raise OutboundRefused(path, "a Unix socket")

    def sleep(self, seconds: float) -> None:
        """Sleep as the inner backend does (cooperative under gevent)."""
        self.inner.sleep(seconds)


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport with its connection pool on a :class:`GuardedBackend`.

    No proxy and no environment: a proxy would connect on the caller's behalf, unvetted.
    """

    def __init__(
        self, allow: OutboundAllow | None = None, limits: httpx.Limits = DEFAULT_LIMITS
    ) -> None:
        super().__init__(trust_env=False, limits=limits)
        backend = GuardedBackend(get_exposure_settings().allow if allow is None else allow)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )


def outbound_client(
    allow: OutboundAllow | None = None,
    *,
    follow_redirects: bool = False,
    limits: httpx.Limits = DEFAULT_LIMITS,
    headers: dict[str, str] | None = None,
) -> httpx.Client:
    """An httpx client for destinations a producer chose: every connection vetted.

    Args:
        allow: What the allowlist opens (default: ``TASKFLEET_OUTBOUND_ALLOW``).
        follow_redirects: Follow up to ``MAX_REDIRECTS`` redirects, each hop's connection
            vetted like the first.
        limits: Connection pool limits.
        headers: Headers sent with every request.
    """
    return httpx.Client(
        transport=GuardedTransport(allow, limits),
        follow_redirects=follow_redirects,
        max_redirects=MAX_REDIRECTS,
        trust_env=False,
        headers=headers,
    )
