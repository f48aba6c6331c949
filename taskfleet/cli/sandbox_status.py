"""The line ``taskfleet up`` prints about sandbox jobs: isolation, syscall filter, limit scope."""

from __future__ import annotations

from taskfleet.config.sandbox import SandboxSettings, get_sandbox_settings
from taskfleet.sandbox.cgroups import probe
from taskfleet.sandbox.isolation import namespaces_unavailable_reason
from taskfleet.sandbox.seccomp_policy import FilterUnavailable, compile_filter, machine


def sandbox_status(settings: SandboxSettings | None = None) -> str:
    """What a ``sandbox.run`` job gets on this host, in one line.

    Names what is missing: namespaces (and why), the syscall filter (an unsupported
    architecture), and whole-run limits (no delegated cgroup v2: per process only).
    """
    settings = settings or get_sandbox_settings()
    try:
        compile_filter()
    except FilterUnavailable as exc:
        return f"sandbox: {exc}"
    why_not = namespaces_unavailable_reason()
    if why_not is None:
        isolation = "namespaces"
    elif settings.allow_degraded:
        isolation = f"rlimits only, no namespaces ({why_not})"
    else:
        return f"sandbox: sandbox.run jobs are rejected: {why_not}"
    note = probe(settings.cgroup_root).note()
    return f"sandbox: {isolation}, seccomp filter ({machine()}); {note}"
