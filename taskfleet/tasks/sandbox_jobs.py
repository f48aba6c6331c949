"""The ``sandbox.run`` job: run caller-supplied Python in a sandbox on the CPU pool.

Payload: ``{"source": str, "stdin": str | None, "limits": {...}}``. The job always returns a
``SandboxResult`` as a dict, a bad payload included (``status="rejected"``), so a caller never
has to tell a crash of its code from a crash of the job. Running the same payload again runs
it again in a fresh sandbox with nothing shared: redelivery (at-least-once) is harmless.
"""

from __future__ import annotations

import threading
from typing import Any

from taskfleet.cache.reuse import SANDBOX_KEY_FIELDS, content_hash_key
from taskfleet.sandbox import SandboxExecutor
from taskfleet.tasks.base import job
from taskfleet.tasks.job_app import app

_executor: SandboxExecutor | None = None
_lock = threading.Lock()


def executor() -> SandboxExecutor:
    """This process's executor (built on first use, so a prefork child gets its own)."""
    global _executor
    with _lock:
        if _executor is None:
            _executor = SandboxExecutor()
        return _executor


_content_key = content_hash_key(SANDBOX_KEY_FIELDS)


def reuse_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """Cache key of a run whose payload says ``"reuse": true`` (sha256 of source, stdin and
    limits); None, so the code runs, for every other run: sandboxed code is not assumed to
    be deterministic unless its caller says so."""
    payload = args[0] if args else kwargs.get("payload")
    if not isinstance(payload, dict) or payload.get("reuse") is not True:
        return None
    return _content_key(args, kwargs)


@job(app, "sandbox.run", "cpu", cache=reuse_key)
def sandbox_run(payload: Any = None) -> dict[str, Any]:
    """Run ``payload["source"]`` in a sandbox and return what happened."""
    return executor().run(payload).model_dump(mode="json")
