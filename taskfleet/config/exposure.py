"""What a producer can reach: the diagnostic jobs, and where outbound HTTP may go.

Read from ``TASKFLEET_DIAG_JOBS`` and ``TASKFLEET_OUTBOUND_ALLOW``, validated once, with
errors naming the variable. Both default to the safe side: no ``diag.*`` job is registered,
and outbound HTTP (webhooks) reaches public addresses only.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from taskfleet.config.settings import ENV_PREFIX, load_validated

#: ``diag.*`` jobs (``taskfleet.resilience.testing_jobs``) fail, hold or kill their worker on
#: purpose: registered only where a test or an operator turns them on.
DEFAULT_DIAG_JOBS = False
#: Separates the entries of ``TASKFLEET_OUTBOUND_ALLOW``.
ALLOW_SEPARATOR = ","

#: A host name as DNS spells it (letters, digits, hyphens, underscores; dot-separated labels).
HOST_NAME = re.compile(
    r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*"
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class OutboundAllow:
    """Hosts and networks outbound HTTP may reach although their addresses are not public.

    Attributes:
        hosts: Host names (lower case, no trailing dot) whose resolved addresses are allowed,
            except cloud metadata addresses, which only an allowed network opens.
        networks: Networks whose addresses are allowed, whatever the host name.
    """

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: tuple[str, ...]) -> OutboundAllow:
        """Split entries into networks (``10.0.0.0/8``, ``127.0.0.1``, ``::1``) and host names."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(normal_host(entry))
        return cls(frozenset(hosts), tuple(networks))


def normal_host(host: str) -> str:
    """``host`` as the allowlist compares it: lower case, without a trailing dot or brackets."""
    return host.strip().strip("[]").rstrip(".").lower()


class ExposureSettings(BaseSettings):
    """Operator switches for what untrusted producers can reach."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", validate_default=True
    )

    diag_jobs: bool = Field(
        DEFAULT_DIAG_JOBS,
        description="Register the diag.* jobs (tests, chaos runs): they fail or kill on purpose",
    )
    outbound_allow: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description=(
            "Comma-separated host names and networks (CIDR or single addresses) that "
            "webhooks may reach although they are loopback, private or link-local"
        ),
    )

    @field_validator("outbound_allow", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(ALLOW_SEPARATOR) if part.strip())
        return value

    @field_validator("outbound_allow")
    @classmethod
    def _valid_entries(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                if not HOST_NAME.fullmatch(normal_host(entry)):
                    raise ValueError(f"not a host name or network: {entry!r}") from None
        return value

    @property
    def allow(self) -> OutboundAllow:
        """The parsed allowlist."""
        return OutboundAllow.parse(self.outbound_allow)


def load_exposure_settings(**overrides: object) -> ExposureSettings:
    """Read and validate the settings, as one ConfigError naming each bad variable."""
    return load_validated(ExposureSettings, "exposure settings", **overrides)


@lru_cache(maxsize=1)
def get_exposure_settings() -> ExposureSettings:
    """The process-wide exposure settings, read once."""
    return load_exposure_settings()
