"""The sandbox's seccomp-bpf policy, as data, and its compilation with libseccomp.

Policy: an allow list. A syscall the program may make is named in ``ALLOWED`` (or allowed
for some arguments only, below); every other one fails with ``EPERM``, the way Docker's
default profile refuses. An allow list rather than a deny list, because the kernel keeps
adding syscalls and a deny list lets each new one through until somebody reviews it:
``io_uring`` (2019) and ``userfaultfd`` were reachable from containers that way for years.
The allow list is a subset of Docker's default profile's unconditional allows, minus
``ptrace``, ``process_vm_readv``/``process_vm_writev`` (Docker allows them on kernels 4.8+),
``modify_ldt``, ``memfd_secret``, ``name_to_handle_at``, ``fanotify_mark``, ``remap_file_pages``,
``listmount``/``statmount``, ``uretprobe``, the time-setting calls and the 32-bit ABI calls.

Allowed for some arguments only:

- ``clone`` when its flags ask for no new namespace (``CLONE_NAMESPACE_FLAGS``): threads,
  ``fork`` and ``vfork`` work, ``clone(CLONE_NEWUSER | ...)`` gets ``EPERM``.
- ``personality`` with ``PER_LINUX`` (0) or the query (``0xffffffff``) only: no
  ``READ_IMPLIES_EXEC``, no ``ADDR_NO_RANDOMIZE``. The kernel reads the argument as 32 bits;
  a value with high bits set is refused, which errs on the safe side.

``clone3`` fails with ``ENOSYS`` (``ENOSYS_SYSCALLS``): its flags are in a struct behind a
pointer, which a seccomp filter cannot read, so it cannot be allowed for some flags only;
``ENOSYS`` makes glibc fall back to ``clone``, which is filtered by flag (as Docker does).

Foreign ABIs fail with ``EPERM`` too: the filter names only the native architecture, so an
i386 ``int 0x80`` call or an x32 call on x86_64 (or arm32 on aarch64) matches no rule.

``REFUSED`` names what the policy refuses on purpose (each has a test from inside a real
run, tests/integration/test_sandbox_seccomp.py); none of it may be in ``ALLOWED``.

Supported: x86_64 and aarch64. Anywhere else ``compile_filter`` raises
``UnsupportedArchitecture`` and no run starts: the sandbox never runs code unfiltered. Nor
where libseccomp cannot be loaded (``FilterUnavailable``; it is imported on first use, so a
worker without it still starts and serves every other job).
The worker compiles the filter once (about a millisecond) and hands the BPF program to each
launcher, which loads it with ``prctl(PR_SET_SECCOMP)`` as the last step before the program.
"""

from __future__ import annotations

import errno
import os
import tempfile
from functools import lru_cache
from typing import Any

#: ``uname -m`` -> libseccomp's architecture token (``pyseccomp.Arch`` attribute).
ARCHES = {"x86_64": "X86_64", "aarch64": "AARCH64"}
REFUSE_ERRNO = errno.EPERM
#: Calls a newer libc tries first and falls back from on ENOSYS.
ENOSYS_SYSCALLS = ("clone3",)
#: clone() flags that create namespaces (CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER,
#: NEWPID, NEWNET); clone is allowed only when none is set.
CLONE_NAMESPACE_FLAGS = 0x7E020000
PER_LINUX = 0
PERSONALITY_QUERY = 0xFFFFFFFF
#: The query as C passes ``personality(-1)``: the kernel reads the low 32 bits only.
PERSONALITY_QUERY_WIDE = 0xFFFF_FFFF_FFFF_FFFF
PERSONALITY_ALLOWED = (PER_LINUX, PERSONALITY_QUERY, PERSONALITY_QUERY_WIDE)
#: libseccomp's binary-tree layout (SCMP_FLTATR_CTL_OPTIMIZE=2): O(log n) checks per call.
OPTIMIZE_BINARY_TREE = 2
#: libseccomp's "no such syscall" (__NR_SCMP_ERROR): a name newer than the installed library.
UNKNOWN_SYSCALL = -1

ALLOWED: tuple[str, ...] = (
    # files and directories
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
    "preadv2", "pwritev2", "open", "openat", "openat2", "creat", "close", "close_range",
    "lseek", "dup", "dup2", "dup3", "fcntl", "flock", "fsync", "fdatasync", "sync",
    "syncfs", "sync_file_range", "fallocate", "fadvise64", "readahead", "truncate",
    "ftruncate", "stat", "fstat", "lstat", "newfstatat", "statx", "statfs", "fstatfs",
    "access", "faccessat", "faccessat2", "getdents", "getdents64", "getcwd", "chdir",
    "fchdir", "rename", "renameat", "renameat2", "mkdir", "mkdirat", "rmdir", "link",
    "linkat", "unlink", "unlinkat", "symlink", "symlinkat", "readlink", "readlinkat",
    "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat",
    "umask", "utime", "utimes", "utimensat", "futimesat", "mknod", "mknodat",
    "copy_file_range", "sendfile", "splice", "tee", "vmsplice", "ioctl",
    "getxattr", "lgetxattr", "fgetxattr", "listxattr", "llistxattr", "flistxattr",
    "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr",
    "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
    "io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents",
    # memory
    "brk", "mmap", "munmap", "mremap", "mprotect", "msync", "mincore", "madvise",
    "mlock", "mlock2", "munlock", "mlockall", "munlockall", "memfd_create", "membarrier",
    "pkey_alloc", "pkey_free", "pkey_mprotect",
    # processes and threads (clone: below, by flags)
    "fork", "vfork", "execve", "execveat", "exit", "exit_group", "wait4", "waitid",
    "getpid", "getppid", "gettid", "getpgid", "setpgid", "getpgrp", "getsid", "setsid",
    "getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid", "getgroups",
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups",
    "setfsuid", "setfsgid", "capget", "capset", "prctl", "arch_prctl", "set_tid_address",
    "set_robust_list", "get_robust_list", "rseq", "futex", "futex_waitv", "futex_wake",
    "futex_wait", "futex_requeue", "get_thread_area", "set_thread_area", "getrlimit",
    "setrlimit", "prlimit64", "getrusage", "times", "getpriority", "setpriority",
    "sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getparam",
    "sched_setparam", "sched_getscheduler", "sched_setscheduler", "sched_getattr",
    "sched_setattr", "sched_get_priority_max", "sched_get_priority_min",
    "sched_rr_get_interval", "getcpu", "ioprio_get", "ioprio_set", "pidfd_open",
    "pidfd_send_signal", "seccomp", "landlock_create_ruleset", "landlock_add_rule",
    "landlock_restrict_self", "restart_syscall",
    # signals
    "kill", "tkill", "tgkill", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn",
    "rt_sigpending", "rt_sigsuspend", "rt_sigtimedwait", "rt_sigqueueinfo",
    "rt_tgsigqueueinfo", "sigaltstack", "signalfd", "signalfd4", "pause",
    # time (reading it only)
    "time", "gettimeofday", "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep",
    "alarm", "getitimer", "setitimer", "timer_create", "timer_delete", "timer_gettime",
    "timer_settime", "timer_getoverrun", "timerfd_create", "timerfd_gettime",
    "timerfd_settime",
    # waiting and events
    "select", "pselect6", "poll", "ppoll", "epoll_create", "epoll_create1", "epoll_ctl",
    "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2", "pipe", "pipe2",
    # sockets: the network namespace has only lo
    "socket", "socketpair", "bind", "listen", "accept", "accept4", "connect", "shutdown",
    "getsockname", "getpeername", "getsockopt", "setsockopt", "sendto", "recvfrom",
    "sendmsg", "recvmsg", "sendmmsg", "recvmmsg",
    # System V and POSIX IPC: the IPC namespace is the run's own
    "msgget", "msgsnd", "msgrcv", "msgctl", "semget", "semop", "semtimedop", "semctl",
    "shmget", "shmat", "shmdt", "shmctl", "mq_open", "mq_unlink", "mq_timedsend",
    "mq_timedreceive", "mq_notify", "mq_getsetattr",
    # system information
    "uname", "sysinfo", "getrandom",
)  # fmt: skip

#: Refused on purpose (EPERM; clone3 ENOSYS, clone with namespace flags EPERM): the kernel
#: surfaces and escapes issue 19 lists, and their relatives.
REFUSED: tuple[str, ...] = (
    "io_uring_setup", "io_uring_enter", "io_uring_register", "bpf", "perf_event_open",
    "userfaultfd", "keyctl", "add_key", "request_key", "ptrace", "process_vm_readv",
    "process_vm_writev", "process_madvise", "pidfd_getfd", "kcmp", "mount", "umount2",
    "pivot_root", "chroot", "setns", "unshare", "fsopen", "fsconfig", "fsmount", "fspick",
    "open_tree", "move_mount", "mount_setattr", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "reboot", "swapon", "swapoff", "acct",
    "open_by_handle_at", "name_to_handle_at", "quotactl", "syslog", "sethostname",
    "setdomainname", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "iopl",
    "ioperm", "modify_ldt", "vhangup", "uselib", "memfd_secret", "fanotify_init",
    "lookup_dcookie", "mbind", "set_mempolicy", "move_pages", "migrate_pages",
)  # fmt: skip


class FilterUnavailable(RuntimeError):
    """The syscall filter cannot be built here: sandbox runs are refused."""


class UnsupportedArchitecture(FilterUnavailable):
    """No seccomp policy for this machine's architecture: sandbox runs are refused."""


def libseccomp() -> Any:
    """The ``pyseccomp`` module, loaded on first use.

    Raises:
        FilterUnavailable: the system's libseccomp.so.2 is missing.
    """
    try:
        import pyseccomp
    except (ImportError, RuntimeError, OSError) as exc:
        raise FilterUnavailable(
            f"sandbox refused: libseccomp cannot be loaded ({exc}); install libseccomp2, "
            "sandbox jobs do not run without their syscall filter"
        ) from None
    return pyseccomp


def _arch(name: str) -> int:
    try:
        return int(getattr(libseccomp().Arch, ARCHES[name]))
    except KeyError:
        raise UnsupportedArchitecture(
            f"sandbox refused: no seccomp policy for the {name!r} architecture (supported: "
            f"{', '.join(ARCHES)}); sandbox jobs do not run without their syscall filter"
        ) from None


def build_filter(arch_name: str, extra: tuple[str, ...] = ()) -> Any:
    """The policy as a libseccomp filter for ``arch_name`` (as ``uname -m`` says).

    ``extra`` names more syscalls to allow (the worker's own profile, ``worker_profile``).

    Raises:
        UnsupportedArchitecture: ``arch_name`` is neither x86_64 nor aarch64.
        FilterUnavailable: libseccomp cannot be loaded.
    """
    arch = _arch(arch_name)
    pyseccomp = libseccomp()
    refuse = pyseccomp.ERRNO(REFUSE_ERRNO)
    flt = pyseccomp.SyscallFilter(refuse)
    if arch != pyseccomp.system_arch():
        flt.add_arch(arch)
        flt.remove_arch(pyseccomp.Arch.NATIVE)
    flt.set_attr(pyseccomp.Attr.ACT_BADARCH, refuse)
    flt.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, OPTIMIZE_BINARY_TREE)
    for name in (*ALLOWED, *extra):
        if pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name) != UNKNOWN_SYSCALL:
            flt.add_rule(pyseccomp.ALLOW, name)  # a name absent on ``arch`` is skipped
    flt.add_rule(
        pyseccomp.ALLOW, "clone", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, CLONE_NAMESPACE_FLAGS, 0)
    )
    for persona in PERSONALITY_ALLOWED:
        flt.add_rule(pyseccomp.ALLOW, "personality", pyseccomp.Arg(0, pyseccomp.EQ, persona))
    for name in ENOSYS_SYSCALLS:
        flt.add_rule(pyseccomp.ERRNO(errno.ENOSYS), name)
    return flt


def machine() -> str:
    """This machine's architecture, as ``uname -m`` says."""
    return os.uname().machine


def compile_filter(arch: str | None = None) -> bytes:
    """The policy as a BPF program (an array of ``struct sock_filter``) for ``arch``.

    Raises:
        FilterUnavailable: no policy for ``arch`` (default: this machine's), or no libseccomp.
    """
    return _compiled(arch or machine())


@lru_cache(maxsize=4)
def _compiled(arch: str) -> bytes:
    with tempfile.TemporaryFile() as out:
        build_filter(arch).export_bpf(out)
        out.seek(0)
        return out.read()


def describe(arch: str | None = None) -> str:
    """The compiled filter as libseccomp's pseudo code (for review and debugging)."""
    with tempfile.TemporaryFile() as out:
        build_filter(arch or machine()).export_pfc(out)
        out.seek(0)
        return out.read().decode()
