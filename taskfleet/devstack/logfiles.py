"""Reading log files: tails for error messages, new output since an offset."""

from __future__ import annotations

import os
from pathlib import Path

TAIL_LINES = 20
"""How many lines :func:`tail` returns by default."""

TAIL_MAX_BYTES = 16384
"""How much of the end of a file :func:`tail` reads by default."""


def tail(path: Path, lines: int = TAIL_LINES, max_bytes: int = TAIL_MAX_BYTES) -> str:
    """The last ``lines`` lines of a text file (``""`` when unreadable).

    Args:
        path: The file.
        lines: How many lines.
        max_bytes: Only the last ``max_bytes`` bytes of the file are read.

    Returns:
        The lines, joined with newlines.
    """
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - max_bytes))
            data = fh.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def read_from(path: Path, offset: int) -> str:
    """The content of ``path`` after byte ``offset`` (``""`` if missing)."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def file_size(path: Path) -> int:
    """Size of ``path`` in bytes (0 if missing)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0
