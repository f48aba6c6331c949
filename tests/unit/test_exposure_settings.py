"""Exposure settings (issue 19): safe defaults, the allowlist's parsing, errors naming the variable."""

from __future__ import annotations

import ipaddress

import pytest

from taskfleet.config import ConfigError
from taskfleet.config.exposure import OutboundAllow, load_exposure_settings


@pytest.mark.usefixtures("clean_env")
def test_defaults_register_no_diag_job_and_allow_no_private_address() -> None:
    settings = load_exposure_settings()
    assert settings.diag_jobs is False
    assert settings.outbound_allow == ()
    assert settings.allow == OutboundAllow()


@pytest.mark.usefixtures("clean_env")
def test_the_allowlist_is_comma_separated_hosts_and_networks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKFLEET_OUTBOUND_ALLOW", " Hooks.Internal. , 10.1.0.0/16,127.0.0.1,::1 ,")
    monkeypatch.setenv("TASKFLEET_DIAG_JOBS", "true")
    settings = load_exposure_settings()
    assert settings.diag_jobs is True
    allow = settings.allow
    assert allow.hosts == frozenset({"hooks.internal"})
    assert allow.networks == (
        ipaddress.ip_network("10.1.0.0/16"),
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    )


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("entry", ["http://x.test/", "a b", "user@host", "10.0.0.0/99"])
def test_a_bad_allowlist_entry_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, entry: str
) -> None:
    monkeypatch.setenv("TASKFLEET_OUTBOUND_ALLOW", entry)
    with pytest.raises(ConfigError, match="TASKFLEET_OUTBOUND_ALLOW"):
        load_exposure_settings()
