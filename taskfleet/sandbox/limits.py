"""Per-run limits and the request payload, validated against the operator's ceilings."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from taskfleet.config.sandbox import SandboxSettings

LimitName = Literal[
    "wall_time", "cpu_time", "memory", "processes", "file_size", "open_files", "output"
]


class RequestError(ValueError):
    """A sandbox payload that cannot run; the message says which field and why."""


class SandboxLimits(BaseModel):
    """What one run may use. Every field is set (defaults filled in from settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    wall_time_s: float = Field(gt=0, description="Wall clock; the whole tree is killed after")
    cpu_time_s: int = Field(ge=1, description="CPU seconds per process (RLIMIT_CPU)")
    memory_bytes: int = Field(ge=1, description="Address space per process (RLIMIT_AS)")
    processes: int = Field(ge=1, description="Processes of the sandbox user (RLIMIT_NPROC)")
    file_size_bytes: int = Field(ge=0, description="Largest file it may write (RLIMIT_FSIZE)")
    open_files: int = Field(ge=16, description="Open file descriptors (RLIMIT_NOFILE)")
    output_bytes: int = Field(ge=1, description="Bytes kept per stream; more kills the run")

    def rlimits(self) -> dict[str, int]:
        """The resource limits the program process starts with."""
        return {
            "RLIMIT_CPU": self.cpu_time_s,
            "RLIMIT_AS": self.memory_bytes,
            "RLIMIT_NPROC": self.processes,
            "RLIMIT_FSIZE": self.file_size_bytes,
            "RLIMIT_NOFILE": self.open_files,
            "RLIMIT_CORE": 0,
        }


class SandboxRequest(BaseModel):
    """The ``sandbox.run`` payload: ``{"source": str, "stdin": str | None, "limits": {...}}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    stdin: str | None = None
    limits: dict[str, float] = Field(default_factory=dict)
    #: The caller declares the run deterministic: an identical earlier run (same source,
    #: stdin and limits) may answer it from the result cache (``cache_hit`` in the result).
    reuse: bool = False


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'payload'}: {err['msg']}" for err in exc.errors()
    )


def resolve_limits(requested: dict[str, Any] | None, settings: SandboxSettings) -> SandboxLimits:
    """Fill unset limits from the defaults and refuse any above its ceiling.

    Raises:
        RequestError: an unknown limit, a bad value, or one above the operator's ceiling.
    """
    requested = dict(requested or {})
    unknown = sorted(set(requested) - set(settings.defaults()))
    if unknown:
        raise RequestError(f"limits: unknown limit(s) {unknown}")
    if "cpu_time_s" in requested and isinstance(requested["cpu_time_s"], float):
        requested["cpu_time_s"] = math.ceil(requested["cpu_time_s"])  # RLIMIT_CPU is whole s
    try:
        limits = SandboxLimits(**(settings.defaults() | requested))
    except ValidationError as exc:
        raise RequestError(f"limits.{_describe(exc)}") from None
    over = [
        f"limits.{name}: {getattr(limits, name)} is above the ceiling {ceiling}"
        for name, ceiling in settings.ceilings().items()
        if getattr(limits, name) > ceiling
    ]
    if over:
        raise RequestError("; ".join(over))
    return limits


def parse_request(payload: Any, settings: SandboxSettings) -> tuple[SandboxRequest, SandboxLimits]:
    """Validate a raw payload (from JSON) into a request and its effective limits.

    Raises:
        RequestError: the payload is malformed, too large, or asks for too much.
    """
    if not isinstance(payload, dict):
        raise RequestError(f"payload: expected an object, got {type(payload).__name__}")
    try:
        request = SandboxRequest.model_validate(payload, strict=False)
    except ValidationError as exc:
        raise RequestError(_describe(exc)) from None
    if len(request.source.encode()) > settings.max_source_bytes:
        raise RequestError(f"source: longer than {settings.max_source_bytes} bytes")
    if "\x00" in request.source:
        raise RequestError("source: contains a NUL character")
    if request.stdin is not None and len(request.stdin.encode()) > settings.max_stdin_bytes:
        raise RequestError(f"stdin: longer than {settings.max_stdin_bytes} bytes")
    return request, resolve_limits(payload.get("limits"), settings)
