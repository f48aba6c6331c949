"""The CPU worker container's seccomp profile (Docker's JSON format), from the sandbox's policy.

A worker that sets sandboxes up needs what a sandboxed program may do (``seccomp_policy``:
the allow list and its argument rules) plus the calls that build a sandbox, ``WORKER_SETUP``.
Docker's default profile allows those only to a container with ``CAP_SYS_ADMIN``, which is
most of root; this profile allows them to the CPU worker alone, with no capability but
``SETUID``, ``SETGID`` and ``KILL`` (docker-compose.yml). Everything else is as strict as the
sandbox's own filter: no ``ptrace``, ``io_uring``, ``bpf``, keyrings, module or kexec calls,
``clone3`` gets ``ENOSYS``, foreign ABIs nothing.

``python -m taskfleet.sandbox.worker_profile > docker/seccomp-cpu-worker.json`` writes the
shipped file; tests/unit/test_compose.py checks that it is current.
"""

from __future__ import annotations

import errno
import json
import sys
from typing import Any

from taskfleet.sandbox.seccomp_policy import (
    ALLOWED,
    ARCHES,
    CLONE_NAMESPACE_FLAGS,
    ENOSYS_SYSCALLS,
    PERSONALITY_ALLOWED,
    REFUSE_ERRNO,
    build_filter,
)

#: What the executor and the launcher call to build a sandbox (taskfleet/sandbox/launcher.py):
#: the namespaces, the private root's mounts, pivot_root and the detach of the old root, the
#: sandbox's hostname. (``open_tree``/``move_mount``/``mount_setattr`` are needed only for an
#: interpreter outside /usr; the image's is /usr/local.)
WORKER_SETUP = ("unshare", "mount", "umount2", "pivot_root", "sethostname")
DOCKER_ARCH_NAMES = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}


def worker_filter(arch_name: str) -> Any:
    """The same profile as a libseccomp filter (tests load it to stand in for Docker)."""
    return build_filter(arch_name, WORKER_SETUP)


def _equals(value: int) -> dict[str, Any]:
    return {"index": 0, "value": value, "op": "SCMP_CMP_EQ"}


def _rule(name: str, action: str, **fields: Any) -> dict[str, Any]:
    return {"names": [name], "action": action, **fields}


def docker_profile() -> dict[str, Any]:
    """The profile as ``docker run --security-opt seccomp=<file>`` reads it."""
    allowed = sorted({*ALLOWED, *WORKER_SETUP})
    clone_args = [
        {"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}
    ]
    rules = [
        {"names": allowed, "action": "SCMP_ACT_ALLOW"},
        _rule("clone", "SCMP_ACT_ALLOW", args=clone_args),
        *(
            _rule(
                "personality",
                "SCMP_ACT_ALLOW",
                args=[{"index": 0, "value": persona, "op": "SCMP_CMP_EQ"}],
            )
            for persona in PERSONALITY_ALLOWED
        ),
        *(_rule(name, "SCMP_ACT_ERRNO", errnoRet=errno.ENOSYS) for name in ENOSYS_SYSCALLS),
    ]
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": REFUSE_ERRNO,
        "archMap": [
            {"architecture": DOCKER_ARCH_NAMES[arch], "subArchitectures": []} for arch in ARCHES
        ],
        "syscalls": rules,
    }


def render() -> str:
    """The shipped file's text."""
    return json.dumps(docker_profile(), indent=2) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
