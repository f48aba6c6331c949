"""A throwaway Linux VM that runs one command of this checkout on a pure cgroup v2 kernel.

Some behaviour needs a kernel this machine's own does not offer: here the memory, pids and
cpu controllers are held by cgroup v1 hierarchies, so whole-run sandbox limits (cgroup v2)
cannot be enforced on the host. The VM boots Debian's stock kernel under QEMU (software
emulation; KVM is used where it works), with:

- the host's root file system shared read-only over virtio-9p and used as the guest's root,
  so the guest runs this very checkout and its ``.venv``, nothing copied;
- a tmpfs on ``/run`` (the guest's ``TMPDIR`` is ``/run/tmp``: the host's ``/tmp`` stays
  visible, read-only, since a checkout may live there), and cgroup v2 alone on
  ``/sys/fs/cgroup``;
- one writable 9p share, ``/mnt/tf`` in the guest, for the command's script and its output;
- **no network device at all** (``-nic none``).

An initramfs of a static busybox and the kernel's virtio and 9p modules mounts all that and
``switch_root``s into the host's tree; the command's script powers the VM off when it ends.

Needs (Debian): ``qemu-system-x86``, ``busybox-static`` and ``linux-image-amd64`` (the
``-cloud`` kernel has no 9p). ``missing()`` names what is absent.
"""

from __future__ import annotations

import gzip
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

QEMU = "qemu-system-x86_64"
BUSYBOX_PATHS = ("/bin/busybox", "/usr/bin/busybox")
#: In load order: each after the modules it needs (``modinfo -F depends``).
MODULES = (
    "virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
    "netfs", "fscache", "9pnet", "9pnet_virtio", "9p",
)  # fmt: skip
GUEST_SHARE = "/mnt/tf"
GUEST_TMP = "/run/tmp"
VM_MEMORY_MIB = 1024
VM_CPUS = 2
BOOT_TIMEOUT_S = 600.0
NINE_P = "trans=virtio,version=9p2000.L,msize=512000"

INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc && mount -t sysfs sys /sys && mount -t devtmpfs dev /dev
for m in {" ".join(MODULES)}; do insmod /modules/$m.ko || echo "vm: insmod $m failed"; done
mount -t 9p -o {NINE_P},ro hostroot /newroot || echo "vm: no host root"
for d in run mnt; do mount -t tmpfs -o mode=1777 tmpfs /newroot/$d; done
mkdir -p /newroot{GUEST_SHARE}
mount -t 9p -o {NINE_P} out /newroot{GUEST_SHARE} || echo "vm: no output share"
mount --move /proc /newroot/proc && mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
mkdir -p /newroot/dev/shm /newroot/dev/pts && mount -t tmpfs -o mode=1777 shm /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup
exec switch_root /newroot /bin/sh {GUEST_SHARE}/run.sh
"""


@dataclass(frozen=True)
class VmResult:
    """What the guest command left: its exit code (None: it never wrote one) and the console."""

    returncode: int | None
    console: str
    share: Path


def _kernel() -> tuple[Path, Path] | None:
    """A Debian kernel with 9p (not ``-cloud``) and its modules directory."""
    for image in sorted(Path("/boot").glob("vmlinuz-*"), reverse=True):
        release = image.name.removeprefix("vmlinuz-")
        modules = Path("/lib/modules") / release
        if "cloud" not in release and (modules / "kernel/fs/9p/9p.ko").exists():
            return image, modules
    return None


def _busybox() -> Path | None:
    for path in BUSYBOX_PATHS:
        if (
            Path(path).is_file()
            and b"statically linked"
            in subprocess.run(["file", "-L", path], capture_output=True, check=False).stdout
        ):
            return Path(path)
    return None


def missing() -> list[str]:
    """The Debian packages the VM needs that are not installed ([] when it can run)."""
    if platform.machine() != "x86_64":
        return [f"an x86_64 host (this is {platform.machine()})"]
    absent = []
    if shutil.which(QEMU) is None:
        absent.append("qemu-system-x86")
    if shutil.which("file") is None or _busybox() is None:
        absent.append("busybox-static")
    if _kernel() is None:
        absent.append("linux-image-amd64")
    return absent


def _module_file(modules: Path, name: str) -> Path:
    found = subprocess.run(
        ["modinfo", "-k", modules.name, "-F", "filename", name],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    return Path(found)


def build_initramfs(work: Path) -> tuple[Path, Path]:
    """Write the initramfs into ``work``; returns (kernel image, initramfs)."""
    kernel = _kernel()
    busybox = _busybox()
    if kernel is None or busybox is None:
        raise RuntimeError(f"cannot build the VM: missing {', '.join(missing())}")
    image, modules = kernel
    root = work / "initramfs"
    for sub in ("bin", "proc", "sys", "dev", "newroot", "modules"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, root / "bin/busybox")
    for name in MODULES:
        source = _module_file(modules, name)
        data = source.read_bytes()
        if source.suffix == ".xz":
            import lzma

            data = lzma.decompress(data)
        (root / "modules" / f"{name}.ko").write_bytes(data)
    (root / "init").write_text(INIT)
    (root / "init").chmod(0o755)
    listing = subprocess.run(
        ["find", "."], cwd=root, capture_output=True, check=True
    ).stdout  # fmt: skip
    archive = subprocess.run(
        ["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=listing,
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    initramfs = work / "initramfs.cpio.gz"
    initramfs.write_bytes(gzip.compress(archive, compresslevel=1))
    return image, initramfs


class VmRun:
    """A VM started by :func:`start_vm`; :meth:`wait` for its :class:`VmResult`."""

    def __init__(self, proc: subprocess.Popen[str], share: Path, started: float) -> None:
        self.proc, self.share, self.started = proc, share, started

    def wait(self, timeout_s: float = BOOT_TIMEOUT_S) -> VmResult:
        """Wait until the VM powers off (``timeout_s`` from its start, then it is killed)."""
        left = max(0.0, self.started + timeout_s - time.monotonic())
        try:
            console, _ = self.proc.communicate(timeout=left)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            console = f"vm: timed out after {timeout_s} s\n{self.proc.communicate()[0]}"
        code_file = self.share / "returncode"
        code = int(code_file.read_text()) if code_file.is_file() else None
        output = self.share / "output.log"
        log = output.read_text(errors="replace") if output.is_file() else ""
        return VmResult(code, console + log, self.share)


def start_vm(script: str, work: Path, *, nice: int = 0) -> VmRun:
    """Boot the VM in the background to run ``script`` (POSIX sh, as root, cwd ``/``) as its
    only program; ``nice``: QEMU's niceness (19: it takes only CPU nothing else wants).

    The script sees ``$TF_SHARE`` (``/mnt/tf``), which is ``work/share`` on the host; its exit
    code is kept in the result's ``returncode``; the VM powers off when it ends.
    """
    share = work / "share"
    share.mkdir(parents=True, exist_ok=True)
    image, initramfs = build_initramfs(work)
    (share / "run.sh").write_text(
        f"export TF_SHARE={GUEST_SHARE} HOME={GUEST_TMP} TMPDIR={GUEST_TMP}\n"
        f"export PATH=/usr/local/bin:/usr/bin:/bin\nmkdir -p {GUEST_TMP}\n"
        f"( {script}\n) > {GUEST_SHARE}/output.log 2>&1\n"
        f"echo $? > {GUEST_SHARE}/returncode\n"
        "sync\necho o > /proc/sysrq-trigger\nsleep 60\n"
    )
    accel = ["-accel", "kvm", "-cpu", "host"] if _kvm_works() else ["-accel", "tcg", "-cpu", "max"]
    command = [
        QEMU, *accel, "-m", str(VM_MEMORY_MIB), "-smp", str(VM_CPUS),
        "-nographic", "-no-reboot", "-nic", "none",
        "-kernel", str(image), "-initrd", str(initramfs),
        "-append", "console=ttyS0 quiet panic=-1 sysrq_always_enabled",
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on",
        "-virtfs", f"local,path={share},mount_tag=out,security_model=none",
    ]  # fmt: skip
    if nice:
        command = ["nice", "-n", str(nice), *command]
    proc = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, errors="replace",
    )  # fmt: skip
    return VmRun(proc, share, time.monotonic())


def start_sandbox_cases(work: Path, *, nice: int = 0) -> VmRun:
    """The VM running ``tests/support/vm_guest_sandbox.py`` from this checkout, with this
    interpreter (its results in ``share / "results.json"``)."""
    repo = Path(__file__).resolve().parents[2]
    script = f"cd {repo} && {sys.executable} -m tests.support.vm_guest_sandbox"
    return start_vm(script, work, nice=nice)


def run_in_vm(script: str, work: Path, *, timeout_s: float = BOOT_TIMEOUT_S) -> VmResult:
    """:func:`start_vm`, then wait for it."""
    return start_vm(script, work).wait(timeout_s)


def _kvm_works() -> bool:
    """KVM only where the CPU advertises virtualisation (a nested guest without it hangs)."""
    if os.environ.get("TASKFLEET_VM_ACCEL") == "tcg" or not os.access("/dev/kvm", os.R_OK):
        return False
    flags = Path("/proc/cpuinfo").read_text()
    return " vmx" in flags or " svm" in flags
