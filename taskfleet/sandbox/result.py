"""The result of one sandbox run: a pydantic model that serialises to plain JSON."""

from __future__ import annotations

import base64
from typing import Literal

from pydantic import BaseModel, ConfigDict

from taskfleet.sandbox.limits import LimitName, SandboxLimits

#: ``succeeded``: exit 0. ``failed``: non-zero exit or signal, no limit involved.
#: ``limit_exceeded``: stopped by ``limit``. ``rejected``: bad payload or isolation refused
#: (nothing ran). ``sandbox_error``: the sandbox itself could not be set up.
Status = Literal["succeeded", "failed", "limit_exceeded", "rejected", "sandbox_error"]
Mode = Literal["namespaces", "rlimits_only"]
#: ``whole_run``: memory, processes and CPU bound the run's whole tree (a cgroup v2 per run).
#: ``per_process``: rlimits only, each process of the run on its own (no delegated cgroup).
LimitsScope = Literal["whole_run", "per_process"]
#: A UTF-8 sequence is at most 4 bytes; a cut inside one at the end is not an encoding error.
MAX_UTF8_SEQUENCE = 4


class StreamOutput(BaseModel):
    """One captured stream: text if it is UTF-8, else base64 of the bytes."""

    model_config = ConfigDict(frozen=True)

    data: str = ""
    encoding: Literal["utf-8", "base64"] = "utf-8"
    bytes_seen: int = 0
    truncated: bool = False

    @classmethod
    def of(cls, kept: bytes, seen: int) -> StreamOutput:
        """Encode the kept bytes (a multi-byte character cut by the cap is dropped)."""
        truncated = seen > len(kept)
        longest_cut = min(MAX_UTF8_SEQUENCE - 1, len(kept)) if truncated else 0
        for cut in range(longest_cut + 1):
            try:
                text = kept[: len(kept) - cut].decode()
            except UnicodeDecodeError:
                continue
            return cls(data=text, bytes_seen=seen, truncated=truncated)
        return cls(
            data=base64.b64encode(kept).decode(),
            encoding="base64",
            bytes_seen=seen,
            truncated=truncated,
        )

    def raw(self) -> bytes:
        """The kept bytes."""
        return self.data.encode() if self.encoding == "utf-8" else base64.b64decode(self.data)


class SandboxResult(BaseModel):
    """Everything one run produced and used."""

    model_config = ConfigDict(frozen=True)

    status: Status
    mode: Mode | None = None
    limit: LimitName | None = None
    error: str | None = None
    exit_code: int | None = None
    signal: str | None = None
    stdout: StreamOutput = StreamOutput()
    stderr: StreamOutput = StreamOutput()
    wall_time_s: float = 0.0
    cpu_time_s: float = 0.0
    peak_memory_bytes: int = 0
    overhead_s: float = 0.0
    limits: SandboxLimits | None = None
    limits_scope: LimitsScope | None = None
    #: Where the limits apply, and why only per process when so.
    limits_note: str | None = None

    @classmethod
    def rejected(cls, error: str, limits: SandboxLimits | None = None) -> SandboxResult:
        """A run refused before anything started."""
        return cls(status="rejected", error=error, limits=limits)
