"""Settings (pydantic-settings, validated at start) and the service URLs they resolve to."""

from __future__ import annotations

from taskfleet.config.services import ServiceURLs, resolve_services
from taskfleet.config.settings import ConfigError, Settings, get_settings, load_settings

__all__ = [
    "ConfigError",
    "ServiceURLs",
    "Settings",
    "get_settings",
    "load_settings",
    "resolve_services",
]
