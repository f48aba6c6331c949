"""A compose service's security settings as an OCI runtime bundle, run by ``runc``.

No Docker engine runs on this machine, but Docker's runtime does: ``runc``, which applies the
container's namespaces, capabilities, ``no_new_privs`` and seccomp filter. ``bundle_for``
translates one service of ``docker-compose.yml`` the way Docker does (its default mounts,
masked and read-only ``/proc`` paths, ``cap_drop``/``cap_add``, ``security_opt`` with the
seccomp profile file converted to the OCI form, ``user``), so a test can run a command under
exactly what compose would give that service.

What differs from ``docker compose up``: the root file system is this host's, bind-mounted
read-only (the checkout and its ``.venv`` run as they are, nothing copied; writable scratch
is a tmpfs on ``/run``); the network namespace is new and empty (tests talk to nothing);
AppArmor is not applied (this kernel has none).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import yaml

RUNC = "runc"
#: moby's oci/defaults.go: paths Docker masks or makes read-only in every container.
DOCKER_MASKED_PATHS = [
    "/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys",
    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
    "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
]  # fmt: skip
DOCKER_READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
DOCKER_MOUNTS: list[dict[str, Any]] = [
    {"destination": "/proc", "type": "proc", "source": "proc",
     "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
     "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs",
     "options": ["nosuid", "noexec", "nodev", "ro"]},
    {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
     "options": ["ro", "nosuid", "noexec", "nodev"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
     "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
     "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=67108864"]},
]  # fmt: skip
SCRATCH = "/run"
SCRATCH_MOUNT = {
    "destination": SCRATCH, "type": "tmpfs", "source": "tmpfs",
    "options": ["nosuid", "nodev", "mode=1777"],
}  # fmt: skip
NAMESPACES = ("pid", "network", "ipc", "uts", "mount", "cgroup")


def available() -> bool:
    """Whether ``runc`` and ``unshare`` are installed."""
    return shutil.which(RUNC) is not None and shutil.which("unshare") is not None


def service(compose_file: Path, name: str) -> dict[str, Any]:
    """One service of a compose file, YAML merge keys resolved."""
    return dict(yaml.safe_load(compose_file.read_text())["services"][name])


def oci_seccomp(docker_profile: dict[str, Any]) -> dict[str, Any]:
    """A Docker seccomp profile (``archMap``) in the OCI runtime spec's form."""
    architectures = []
    for entry in docker_profile["archMap"]:
        architectures += [entry["architecture"], *entry.get("subArchitectures", [])]
    converted: dict[str, Any] = {
        "defaultAction": docker_profile["defaultAction"],
        "architectures": architectures,
        "syscalls": [
            {key: rule[key] for key in ("names", "action", "args", "errnoRet") if key in rule}
            for rule in docker_profile["syscalls"]
        ],
    }
    if "defaultErrnoRet" in docker_profile:
        converted["defaultErrnoRet"] = docker_profile["defaultErrnoRet"]
    return converted


def _capabilities(spec: dict[str, Any]) -> list[str]:
    dropped = {str(cap).upper() for cap in spec.get("cap_drop", [])}
    if dropped != {"ALL"}:
        raise ValueError(f"only cap_drop: [ALL] is translated, not {sorted(dropped)}")
    return sorted(f"CAP_{str(cap).upper()}" for cap in spec.get("cap_add", []))


def _security(spec: dict[str, Any], base: Path) -> tuple[bool, dict[str, Any] | None]:
    """``(no_new_privs, seccomp)`` from ``security_opt``."""
    no_new_privs, seccomp = False, None
    for option in spec.get("security_opt", []):
        key, _, value = str(option).partition("=" if "=" in option else ":")
        if key == "no-new-privileges":
            no_new_privs = value in ("", "true")
        elif key == "seccomp":
            seccomp = oci_seccomp(json.loads((base / value).read_text()))
        elif key != "apparmor":
            raise ValueError(f"security_opt {option!r} is not translated")
    return no_new_privs, seccomp


def bundle_for(
    spec: dict[str, Any], base: Path, bundle: Path, argv: list[str], env: dict[str, str]
) -> Path:
    """Write an OCI bundle running ``argv`` under service ``spec`` (paths relative to ``base``).

    ``env`` is added to the service's literal ``TASKFLEET_SANDBOX_*`` variables.
    """
    caps = _capabilities(spec)
    no_new_privs, seccomp = _security(spec, base)
    uid, _, gid = str(spec.get("user", "0:0")).partition(":")
    service_env = {
        str(k): str(v)
        for k, v in (spec.get("environment") or {}).items()
        if str(k).startswith("TASKFLEET_SANDBOX_")
    }
    rootfs = bundle / "rootfs"
    rootfs.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "cpu-worker",
        "process": {
            "terminal": False,
            "user": {"uid": int(uid), "gid": int(gid or uid)},
            "args": argv,
            "env": [f"{k}={v}" for k, v in (service_env | env).items()],
            "cwd": SCRATCH,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": no_new_privs,
        },
        "mounts": [*DOCKER_MOUNTS, SCRATCH_MOUNT],
        "linux": {
            "namespaces": [{"type": kind} for kind in NAMESPACES],
            "maskedPaths": DOCKER_MASKED_PATHS,
            "readonlyPaths": DOCKER_READONLY_PATHS,
        },
    }
    if seccomp is not None:
        config["linux"]["seccomp"] = seccomp
    (bundle / "config.json").write_text(json.dumps(config, indent=1))
    return bundle


def run_bundle(bundle: Path, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """``runc run`` the bundle, its root a read-only bind of ``/`` in a private mount namespace
    (the bind goes away with the namespace, whatever happens)."""
    name = f"taskfleet-test-{uuid.uuid4().hex[:12]}"
    script = f'mount --bind / "{bundle}/rootfs" && exec {RUNC} run --bundle "{bundle}" {name}'
    try:
        return subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            capture_output=True, text=True, timeout=timeout_s, check=False,
        )  # fmt: skip
    finally:
        subprocess.run([RUNC, "delete", "--force", name], capture_output=True, check=False)
