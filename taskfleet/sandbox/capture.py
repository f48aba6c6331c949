"""Bounded capture of a program's output, and reading what its uncaught exception says."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from taskfleet.sandbox.limits import LimitName
from taskfleet.sandbox.result import StreamOutput

#: Bytes of stderr kept from the end, to name the uncaught exception even past the cap.
STDERR_TAIL_BYTES = 4096
_EXCEPTION_LINE = re.compile(
    r"^([A-Za-z_][\w.]*(?:Error|error|Exception|Exit|Interrupt|timeout))(?::\s?(.*))?$"
)
#: Uncaught exceptions that mean a limit bit (the kernel refused, the program gave up).
_LIMIT_ERRORS: tuple[tuple[str, str | None, LimitName], ...] = (
    ("MemoryError", None, "memory"),
    ("OSError", "[Errno 27]", "file_size"),
    ("OSError", "[Errno 24]", "open_files"),
    ("BlockingIOError", "[Errno 11]", "processes"),
)


@dataclass
class BoundedStream:
    """Keeps the first ``cap`` bytes of a stream and counts the rest without storing it."""

    cap: int
    kept: bytearray = field(default_factory=bytearray)
    seen: int = 0
    tail: bytearray = field(default_factory=bytearray)

    def feed(self, chunk: bytes) -> bool:
        """Add a chunk; return False once the stream went past its cap."""
        self.seen += len(chunk)
        room = self.cap - len(self.kept)
        if room > 0:
            self.kept += chunk[:room]
        self.tail = (self.tail + chunk)[-STDERR_TAIL_BYTES:]
        return self.seen <= self.cap

    def output(self) -> StreamOutput:
        """The captured stream for the result."""
        return StreamOutput.of(bytes(self.kept), self.seen)


def uncaught_exception(stderr_tail: bytes) -> str | None:
    """``"Type: message"`` from the last line of a traceback, if the tail ends with one."""
    text = stderr_tail.decode(errors="replace")
    if "Traceback (most recent call last)" not in text and "SyntaxError" not in text:
        return None
    # The last exception line, not the last line: a forked program's tracebacks interleave.
    for line in reversed(text.splitlines()):
        match = _EXCEPTION_LINE.match(line.strip())
        if match:
            return match.group(0)
    return None


def limit_from_exception(exception: str | None) -> LimitName | None:
    """The limit an uncaught exception points at (a MemoryError under RLIMIT_AS, …)."""
    if exception is None:
        return None
    for type_name, marker, limit in _LIMIT_ERRORS:
        if exception.split(":", 1)[0].endswith(type_name) and (
            marker is None or marker in exception
        ):
            return limit
    return None
