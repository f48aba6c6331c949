"""Which addresses outbound HTTP may connect to, decided after DNS resolution.

An address is refused when it is not a public (globally reachable) unicast address:
loopback, private, shared (CGNAT), link-local, multicast, unspecified, reserved or
documentation ranges, and cloud metadata endpoints, whatever their range (AWS's
``fd00:ec2::254``, Azure's WireServer ``168.63.129.16``). IPv6 forms that carry an IPv4
address (mapped, NAT64, 6to4, Teredo) are judged by that address too. A host name is
resolved once; if any of its addresses is refused the host is, so a name that also points
inside cannot be raced into a private connection.

The allowlist (``TASKFLEET_OUTBOUND_ALLOW``) opens networks, and host names: an allowed name
may resolve to loopback or private addresses, but never to a metadata address, which only an
allowed network opens.
"""

from __future__ import annotations

import ipaddress
import socket

from taskfleet.config.exposure import OutboundAllow, normal_host

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Cloud instance-metadata and platform endpoints: credentials live behind them.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(address)
    for address in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle (v2)
        "169.254.170.2",  # AWS ECS task metadata and credentials
        "169.254.169.253",  # AWS VPC DNS
        "fd00:ec2::254",  # AWS over IPv6
        "fd00:ec2::23",  # AWS Time Sync over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure WireServer (a public address)
        "192.0.0.192",  # Oracle Cloud (v1)
    )
)
#: Host names of metadata services, refused before any lookup.
METADATA_HOSTS = frozenset(
    {"metadata.google.internal", "metadata.goog", "metadata", "instance-data.ec2.internal"}
)
#: NAT64's well-known prefix: the last 32 bits are an IPv4 address.
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")


class OutboundRefused(ValueError):
    """An outbound connection was refused by policy before it was attempted (not retryable).

    Attributes:
        host: The host asked for.
        reason: Why (``loopback``, ``private``, ``cloud metadata``, ...).
    """

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(
            f"outbound connection to {host!r} refused: {reason} "
            "(TASKFLEET_OUTBOUND_ALLOW opens specific hosts or networks)"
        )
        self.host = host
        self.reason = reason


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4, Teredo), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    return ip.teredo[1] if ip.teredo is not None else None


def refusal(ip: IPAddress) -> str | None:
    """Why ``ip`` is no address for outbound HTTP (None: a public unicast address)."""
    if ip in METADATA_ADDRESSES:
        return f"{ip} is a cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None and (why := refusal(inner)) is not None:
            return f"{ip} carries {inner} ({why})"
    checks = (
        ("a loopback address", ip.is_loopback),
        ("the unspecified address", ip.is_unspecified),
        ("a link-local address", ip.is_link_local),
        ("a multicast address", ip.is_multicast),
        ("a private address", ip.is_private),
        ("a reserved address", ip.is_reserved),
        ("not globally reachable", not ip.is_global),
    )
    return next((f"{ip} is {label}" for label, hit in checks if hit), None)


def allowed(host: str, ip: IPAddress, allow: OutboundAllow) -> bool:
    """Whether the allowlist opens ``ip`` (resolved from ``host``) although it is refused."""
    if any(ip in network for network in allow.networks):
        return True
    return normal_host(host) in allow.hosts and ip not in METADATA_ADDRESSES


def vet(host: str, port: int, allow: OutboundAllow) -> list[str]:
    """Resolve ``host`` once and return its addresses, every one of them vetted.

    The caller connects to these addresses, never to ``host`` again: no second lookup can
    answer differently (DNS rebinding).

    Raises:
        OutboundRefused: the host is a metadata name, or one of its addresses is refused
            and not allowed.
        socket.gaierror: the host does not resolve (a delivery failure, not a refusal).
    """
    name = normal_host(host)
    if name in METADATA_HOSTS and name not in allow.hosts:
        raise OutboundRefused(host, "a cloud metadata host name")
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        text = str(sockaddr[0])
        ip = ipaddress.ip_address(text.split("%", 1)[0])
        why = refusal(ip)
        if why is not None and not allowed(host, ip, allow):
            raise OutboundRefused(host, why)
        if text not in addresses:
            addresses.append(text)
    if not addresses:
        raise socket.gaierror(socket.EAI_NONAME, f"{host!r} resolves to no address")
    return addresses
