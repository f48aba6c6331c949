"""Hostile programs for the seccomp tests: one raw syscall each, printing what the kernel said.

Each vector is a syscall with arguments chosen so that, where the kernel allows it, the call
without the filter does not fail with the errno the filter returns (it succeeds, or fails
early with EFAULT, EINVAL, EBADF or ENOENT): the filter, not a missing capability, is what
refused. ``CAPABILITY_GATED`` vectors fail with EPERM without the filter too (the program has
no capability); the filter refuses them before the kernel gets that far.
"""

from __future__ import annotations

import errno
import json
from dataclasses import dataclass

import pyseccomp

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
SIGCHLD = 17
READ_IMPLIES_EXEC = 0x0400000
UFFD_USER_MODE_ONLY = 1
KEY_SPEC_PROCESS_KEYRING = -2
KEY_SPEC_USER_KEYRING = -4
X32_SYSCALL_BIT = 0x40000000

PRELUDE = """
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
buf = ctypes.create_string_buffer(4096)
class Iovec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))
iov = Iovec(ctypes.addressof(buf), 16)
pid = os.getpid()
def call(nr, *args):
    wide = [ctypes.c_ulong(a & (2**64 - 1)) if isinstance(a, int) else a for a in args]
    ctypes.set_errno(0)
    ret = libc.syscall(nr, *wide)
    if ret == 0 and os.getpid() != pid:  # the child of a clone that went through
        os._exit(0)
    return ret, ctypes.get_errno() if ret == -1 else 0
"""


@dataclass(frozen=True)
class Vector:
    """One refused syscall: its name, its arguments (source text) and the errno it must get."""

    name: str
    syscall: str
    args: str
    refused_with: int = errno.EPERM
    x86_64_only: bool = False

    def source(self, nr: int | None = None) -> str:
        """The program: call the syscall once, print ``{"ret": ..., "errno": ...}``."""
        number = nr if nr is not None else syscall_number(self.syscall)
        return f"{PRELUDE}\nret, err = call({number}, {self.args})\nprint(json.dumps({{'ret': ret, 'errno': err}}))\n"


def syscall_number(name: str) -> int:
    """The native number of ``name`` (libseccomp's table, so x86_64 and aarch64 both work)."""
    nr = int(pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name))
    assert nr >= 0, f"{name} does not exist on this architecture"
    return nr


def outcome(stdout: str) -> tuple[int, int]:
    """``(ret, errno)`` from a vector program's output."""
    seen = json.loads(stdout)
    return int(seen["ret"]), int(seen["errno"])


VECTORS = (
    Vector("io_uring_setup", "io_uring_setup", "1, buf"),
    Vector("unshare_newuser", "unshare", f"{CLONE_NEWUSER}"),
    Vector("ptrace_traceme", "ptrace", "0, 0, 0, 0"),
    Vector("add_key", "add_key", f"b'user', b'tf', b'x', 1, {KEY_SPEC_PROCESS_KEYRING}"),
    Vector("keyctl", "keyctl", f"0, {KEY_SPEC_USER_KEYRING}, 1"),
    Vector("request_key", "request_key", "b'user', b'tf', None, 0"),
    Vector("mount", "mount", "b'none', b'/sandbox', 1, 0, None"),
    Vector("umount2", "umount2", "b'/proc', 0x80000000"),
    Vector("pivot_root", "pivot_root", "b'/sandbox', b'/sandbox'"),
    Vector("chroot", "chroot", "b'/nonexistent'"),
    Vector("setns", "setns", "-1, 0"),
    Vector("clone_newns", "clone", f"{CLONE_NEWNS | SIGCHLD}, 0, 0, 0, 0"),
    Vector("clone_newuser", "clone", f"{CLONE_NEWUSER | SIGCHLD}, 0, 0, 0, 0"),
    Vector("clone3", "clone3", "None, 0", refused_with=errno.ENOSYS),
    Vector("kexec_load", "kexec_load", "0, 0, None, 0"),
    Vector("init_module", "init_module", "None, 0, b''"),
    Vector("finit_module", "finit_module", "-1, b'', 0"),
    Vector("delete_module", "delete_module", "b'tf', 0"),
    Vector("reboot", "reboot", "0, 0, 0, None"),
    Vector("swapon", "swapon", "b'/nonexistent', 0xffffffff"),
    Vector("swapoff", "swapoff", "b'/nonexistent'"),
    Vector("acct", "acct", "None"),
    Vector("open_by_handle_at", "open_by_handle_at", "-1, None, 0"),
    Vector("personality", "personality", f"{READ_IMPLIES_EXEC}"),
    Vector("bpf", "bpf", "0, buf, 48"),
    Vector("perf_event_open", "perf_event_open", "None, 0, -1, -1, 0"),
    Vector("userfaultfd", "userfaultfd", f"{UFFD_USER_MODE_ONLY}"),
    Vector("process_vm_readv", "process_vm_readv", "pid, ctypes.byref(iov), 1, ctypes.byref(iov), 1, 0"),
    Vector("process_vm_writev", "process_vm_writev", "pid, ctypes.byref(iov), 1, ctypes.byref(iov), 1, 0"),
    # The x32 ABI on x86_64: getpid with the x32 bit, a foreign ABI no rule names.
    Vector("x32_abi", "getpid", "", x86_64_only=True),
)  # fmt: skip
