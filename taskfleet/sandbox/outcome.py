"""Turn what a run reported (status lines, captured streams, rusage) into a SandboxResult."""

from __future__ import annotations

import os
import resource
import signal
from dataclasses import dataclass, field
from typing import Any

from taskfleet.sandbox.capture import BoundedStream, limit_from_exception, uncaught_exception
from taskfleet.sandbox.cgroups import RunCgroup
from taskfleet.sandbox.isolation import HostIds
from taskfleet.sandbox.limits import LimitName, SandboxLimits
from taskfleet.sandbox.result import Mode, SandboxResult, Status

KIB = 1024


@dataclass
class RunState:
    """What one run accumulated while in flight."""

    limits: SandboxLimits
    mode: Mode
    ids: HostIds
    stdout: BoundedStream
    stderr: BoundedStream
    status: bytearray = field(default_factory=bytearray)
    killed_for: LimitName | None = None
    cgroup: RunCgroup | None = None
    limits_note: str | None = None

    @classmethod
    def start(cls, limits: SandboxLimits, mode: Mode, ids: HostIds) -> RunState:
        """A fresh state with empty bounded streams."""
        return cls(
            limits,
            mode,
            ids,
            BoundedStream(limits.output_bytes),
            BoundedStream(limits.output_bytes),
        )


def _limit_from_signal(
    signal_name: str | None, cpu_s: float, limits: SandboxLimits
) -> LimitName | None:
    if signal_name == "SIGXCPU" or (signal_name == "SIGKILL" and cpu_s >= limits.cpu_time_s):
        return "cpu_time"
    if signal_name == "SIGXFSZ":
        return "file_size"
    return None


def build_result(
    run: RunState, rusage: resource.struct_rusage | None, elapsed: float
) -> SandboxResult:
    """Classify a finished run.

    Precedence: limits the executor enforced (output, wall time, a whole-run cgroup limit:
    memory.max or pids.max), then the signal that ended the
    program (SIGXCPU, SIGXFSZ), then its uncaught exception (MemoryError under RLIMIT_AS, EFBIG,
    EMFILE, EAGAIN from fork under RLIMIT_NPROC); otherwise its exit code decides.
    """
    messages = run.status.decode(errors="replace").splitlines()
    ended = next((m.split() for m in messages if m[:2] in ("S ", "T ")), None)
    setup_error = next((m[2:] for m in messages if m.startswith("E ")), None)
    cpu_s = rusage.ru_utime + rusage.ru_stime if rusage else 0.0
    peak = rusage.ru_maxrss * KIB if rusage else 0
    if ended and ended[0] == "S" and len(ended) >= 5:  # the program's own, without the launcher
        cpu_s, peak = int(ended[3]) / 1e9, int(ended[4]) * KIB
    wall = int(ended[2] if ended[0] == "S" else ended[1]) / 1e9 if ended else elapsed
    common: dict[str, Any] = {
        "mode": run.mode,
        "limits": run.limits,
        "stdout": run.stdout.output(),
        "stderr": run.stderr.output(),
        "cpu_time_s": round(cpu_s, 6),
        "peak_memory_bytes": peak,
        "wall_time_s": round(wall, 6),
        "overhead_s": round(max(elapsed - wall, 0.0), 6),
        "limits_scope": "whole_run" if run.cgroup else "per_process",
        "limits_note": run.limits_note,
    }
    if (ended is None or setup_error is not None) and run.killed_for is None:
        failure = setup_error or "the sandbox ended without reporting a status"
        return SandboxResult(status="sandbox_error", error=failure, **common)
    exit_code, signal_name = None, None
    if ended and ended[0] == "S":
        wait_status = int(ended[1])
        if os.WIFSIGNALED(wait_status):
            signal_name = signal.Signals(os.WTERMSIG(wait_status)).name
        else:
            exit_code = os.WEXITSTATUS(wait_status)
    exception = uncaught_exception(bytes(run.stderr.tail))
    limit = run.killed_for or ("wall_time" if ended and ended[0] == "T" else None)
    limit = limit or _limit_from_signal(signal_name, cpu_s, run.limits)
    limit = limit or (limit_from_exception(exception) if exit_code else None)
    status: Status
    error: str | None
    if limit is not None:
        status = "limit_exceeded"
        error = f"stopped by the {limit} limit" + (f" ({exception})" if exception else "")
    elif exit_code == 0:
        status, error = "succeeded", None
    else:
        status = "failed"
        error = exception or (
            f"killed by {signal_name}" if signal_name else f"exit code {exit_code}"
        )
    return SandboxResult(
        status=status, limit=limit, error=error, exit_code=exit_code, signal=signal_name, **common
    )
