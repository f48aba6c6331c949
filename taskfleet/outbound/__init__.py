"""Outbound HTTP to destinations a producer chose (webhooks): safe by default.

:mod:`~taskfleet.outbound.policy` decides which addresses may be reached (public unicast
only, unless ``TASKFLEET_OUTBOUND_ALLOW`` opens a host or network; cloud metadata never by
host name), and :mod:`~taskfleet.outbound.transport` applies it to every connection an httpx
client opens, after DNS resolution and on every redirect, connecting to the vetted address.
"""

from __future__ import annotations

from taskfleet.outbound.policy import METADATA_ADDRESSES, OutboundRefused, refusal, vet
from taskfleet.outbound.transport import GuardedBackend, GuardedTransport, outbound_client

__all__ = [
    "METADATA_ADDRESSES",
    "GuardedBackend",
    "GuardedTransport",
    "OutboundRefused",
    "outbound_client",
    "refusal",
    "vet",
]
