"""Sandbox jobs: run caller-supplied Python in an isolated, limited process.

``SandboxExecutor().run({"source": ..., "stdin": ..., "limits": {...}})`` returns a
``SandboxResult``; the ``sandbox.run`` job (``taskfleet.tasks.sandbox_jobs``) returns it as a dict.
"""

from __future__ import annotations

from taskfleet.sandbox.executor import SandboxExecutor
from taskfleet.sandbox.isolation import IsolationUnavailable, choose_mode, namespaces_available
from taskfleet.sandbox.limits import RequestError, SandboxLimits, SandboxRequest, parse_request
from taskfleet.sandbox.result import SandboxResult, StreamOutput

__all__ = [
    "IsolationUnavailable",
    "RequestError",
    "SandboxExecutor",
    "SandboxLimits",
    "SandboxRequest",
    "SandboxResult",
    "StreamOutput",
    "choose_mode",
    "namespaces_available",
    "parse_request",
]
