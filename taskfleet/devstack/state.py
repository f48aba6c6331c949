"""The stack's state file (``stack.json``: chosen ports) and its cross-process lock."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from taskfleet.devstack.common import LOCK_TIMEOUT, STATE_VERSION, DevStackError
from taskfleet.devstack.polling import Deadline


@contextlib.contextmanager
def locked(data_dir: Path, lock_path: Path) -> Iterator[None]:
    """Hold the exclusive ``flock`` on ``lock_path`` (bounded wait of :data:`LOCK_TIMEOUT`).

    Args:
        data_dir: The stack's data folder, created if missing.
        lock_path: The lock file inside it.

    Raises:
        DevStackError: Another process held the lock for too long.
    """
    deadline = Deadline(LOCK_TIMEOUT)
    while True:
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # folder removed by a concurrent destroy(): retry
            if deadline.expired():
                raise
            continue
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                if deadline.expired():
                    raise DevStackError(
                        f"timed out after {LOCK_TIMEOUT:.0f}s waiting for {lock_path}, "
                        "held by another taskfleet process starting or stopping the stack"
                    )
                deadline.backoff()
            # destroy() may have deleted the folder while we waited: lock the new file.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
            except FileNotFoundError:
                same = False
            if same:
                yield
                return
        finally:
            os.close(fd)


def read_state(path: Path) -> dict[str, Any]:
    """The saved state, or a fresh one when the file is missing or unreadable."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"version": STATE_VERSION}
    if not isinstance(raw, dict):
        return {"version": STATE_VERSION}
    return raw


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Save ``state`` (stamped with :data:`STATE_VERSION`) atomically."""
    state["version"] = STATE_VERSION
    atomic_write(path, json.dumps(state, indent=2, sort_keys=True) + "\n")


def atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so readers see the old or the new content, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
