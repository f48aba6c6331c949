"""Sandbox limits, payload validation, settings, output encoding and limit classification."""

from __future__ import annotations

import pytest

from taskfleet.config.sandbox import load_sandbox_settings
from taskfleet.config.settings import ConfigError
from taskfleet.sandbox import isolation
from taskfleet.sandbox.capture import BoundedStream, limit_from_exception, uncaught_exception
from taskfleet.sandbox.executor import SandboxExecutor
from taskfleet.sandbox.limits import RequestError, parse_request, resolve_limits
from taskfleet.sandbox.result import StreamOutput


def test_unset_limits_come_from_the_defaults() -> None:
    settings = load_sandbox_settings(default_wall_time_s=3.0)
    limits = resolve_limits({"memory_bytes": 64 * 1024 * 1024}, settings)
    assert limits.wall_time_s == 3.0
    assert limits.memory_bytes == 64 * 1024 * 1024
    assert limits.rlimits()["RLIMIT_AS"] == 64 * 1024 * 1024
    assert limits.rlimits()["RLIMIT_CORE"] == 0


def test_limits_above_the_ceiling_are_refused_not_clamped() -> None:
    settings = load_sandbox_settings(max_processes=50)
    with pytest.raises(RequestError, match=r"limits.processes: 51 is above the ceiling 50"):
        resolve_limits({"processes": 51}, settings)
    assert resolve_limits({"processes": 50}, settings).processes == 50


@pytest.mark.parametrize(
    ("limits", "needle"),
    [
        ({"cores": 2}, "unknown limit"),
        ({"wall_time_s": 0}, "wall_time_s"),
        ({"memory_bytes": "lots"}, "memory_bytes"),
        ({"open_files": 3}, "open_files"),
    ],
)
def test_bad_limits_name_the_field(limits: dict[str, object], needle: str) -> None:
    with pytest.raises(RequestError, match=needle):
        resolve_limits(limits, load_sandbox_settings())


def test_fractional_cpu_seconds_round_up() -> None:
    assert resolve_limits({"cpu_time_s": 1.2}, load_sandbox_settings()).cpu_time_s == 2


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (None, "expected an object"),
        ({}, "source"),
        ({"source": "x", "stdin": 3}, "stdin"),
        ({"source": "x", "limits": []}, "limits"),
        ({"source": "x" * 2000}, "longer than 1024 bytes"),
        ({"source": "a\x00b"}, "NUL"),
    ],
)
def test_bad_payloads_are_refused(payload: object, needle: str) -> None:
    with pytest.raises(RequestError, match=needle):
        parse_request(payload, load_sandbox_settings(max_source_bytes=1024))


def test_settings_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError, match="TASKFLEET_SANDBOX_DEFAULT_PROCESSES"):
        load_sandbox_settings(default_processes=500, max_processes=100)
    with pytest.raises(ConfigError, match="TASKFLEET_SANDBOX_MAX_WALL_TIME_S"):
        load_sandbox_settings(max_wall_time_s=-1)


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKFLEET_SANDBOX_ALLOW_DEGRADED", "true")
    monkeypatch.setenv("TASKFLEET_SANDBOX_MAX_OUTPUT_BYTES", "4096")
    monkeypatch.setenv("TASKFLEET_SANDBOX_DEFAULT_OUTPUT_BYTES", "2048")
    settings = load_sandbox_settings()
    assert settings.allow_degraded
    assert settings.ceilings()["output_bytes"] == 4096


def test_stream_output_keeps_utf8_and_drops_a_cut_character() -> None:
    stream = BoundedStream(cap=5)
    assert stream.feed("abcé".encode())  # 5 bytes: fits
    assert not stream.feed("é".encode())
    out = stream.output()
    assert out.encoding == "utf-8"
    assert out.data == "abcé"
    assert out.truncated
    assert out.bytes_seen == 7
    cut = StreamOutput.of("abé".encode()[:3], seen=10)  # "ab" + half of "é"
    assert cut.data == "ab"
    assert cut.encoding == "utf-8"


def test_stream_output_falls_back_to_base64() -> None:
    out = StreamOutput.of(b"\xff\xfe ok", seen=5)
    assert out.encoding == "base64"
    assert out.raw() == b"\xff\xfe ok"
    assert not out.truncated


@pytest.mark.parametrize(
    ("stderr", "exception", "limit"),
    [
        (b"Traceback (most recent call last):\n  x\nMemoryError\n", "MemoryError", "memory"),
        (
            b"Traceback (most recent call last):\nOSError: [Errno 27] File too large\n",
            "OSError: [Errno 27] File too large",
            "file_size",
        ),
        (
            b"Traceback (most recent call last):\nBlockingIOError: [Errno 11] Resource\n"
            b"  File interleaved\n",
            "BlockingIOError: [Errno 11] Resource",
            "processes",
        ),
        (
            b"Traceback (most recent call last):\nsocket.gaierror: [Errno -3] failure\n",
            "socket.gaierror: [Errno -3] failure",
            None,
        ),
        (b"MemoryError\n", None, None),  # printed, not raised
    ],
)
def test_uncaught_exception_names_the_limit(
    stderr: bytes, exception: str | None, limit: str | None
) -> None:
    found = uncaught_exception(stderr)
    assert found == exception
    assert limit_from_exception(found) == limit


def test_without_namespaces_runs_are_refused_unless_degraded_is_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(isolation, "namespaces_available", lambda: False)
    refused = SandboxExecutor(load_sandbox_settings(), prestart=False).run({"source": "pass"})
    assert refused.status == "rejected"
    assert refused.error is not None
    assert "TASKFLEET_SANDBOX_ALLOW_DEGRADED" in refused.error
    assert isolation.choose_mode(load_sandbox_settings(allow_degraded=True)) == "rlimits_only"


def test_each_run_gets_two_fresh_unprivileged_host_uids() -> None:
    settings = load_sandbox_settings()
    ids = isolation.HostIds.allocate(settings)
    assert ids.program == ids.root + 1
    assert ids.root >= settings.uid_base
    assert ids.id_map() == f"0 {ids.root} 1\n1000 {ids.program} 1\n"


def test_a_worker_without_setuid_capabilities_is_told_why(monkeypatch: pytest.MonkeyPatch) -> None:
    # The image's uid 10001: namespace mode cannot map runs to host uids, and says so.
    monkeypatch.setattr(isolation, "_can_map_ids", lambda: False)
    isolation.namespaces_unavailable_reason.cache_clear()
    try:
        assert not isolation.namespaces_available()
        with pytest.raises(isolation.IsolationUnavailable, match="lacks CAP_SETUID/CAP_SETGID"):
            isolation.choose_mode(load_sandbox_settings())
    finally:
        isolation.namespaces_unavailable_reason.cache_clear()
