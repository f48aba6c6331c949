"""The ``sandbox.run`` job: run caller-supplied Python in a sandbox on the CPU pool.

Payload: ``{"source": str, "stdin": str | None, "limits": {...}}``. The job always returns a
``SandboxResult`` as a dict, a bad payload included (``status="rejected"``), so a caller never
has to tell a crash of its code from a crash of the job. Running the same payload again runs
it again in a fresh sandbox with nothing shared: redelivery (at-least-once) is harmless.
"""

from __future__ import annotations

import threading
from typing import Any

from taskfleet.app import app
from taskfleet.sandbox import SandboxExecutor
from taskfleet.tasks.base import job

_executor: SandboxExecutor | None = None
_lock = threading.Lock()


def executor() -> SandboxExecutor:
    """This process's executor (built on first use, so a prefork child gets its own)."""
    global _executor
    with _lock:
        if _executor is None:
            _executor = SandboxExecutor()
        return _executor


@job(app, "sandbox.run", "cpu")
def sandbox_run(payload: Any = None) -> dict[str, Any]:
    """Run ``payload["source"]`` in a sandbox and return what happened."""
    return executor().run(payload).model_dump(mode="json")
