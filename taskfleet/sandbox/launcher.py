"""The sandbox launcher, run by the executor as ``python -I -S launcher.py STATUS CONTROL MODE PREFIX``.

Standard library only, and never imported by the worker: it is the first process of a sandbox.

Namespaces mode (Linux): the launcher unshares user, mount, network, PID, IPC and UTS
namespaces and reports ``U``; the executor (root outside) maps ns-root and the sandbox user
(uid 1000 inside) to two unprivileged host uids and sends the run config. The launcher forks
the namespace's init, which builds a private root (read-only binds of the system and the
interpreter, a fresh ``/proc``, a tmpfs work dir), pivots into it and forks the user program.
The program process sets its rlimits, drops to the sandbox user, sets ``no_new_privs`` and,
last, loads the seccomp-bpf filter the worker compiled (``seccomp_policy``) before the
untrusted code runs. When the program exits, or its wall time ends, init reports and exits:
the kernel then kills everything left in the PID namespace, including ``setsid``
grandchildren.

Rlimits-only mode (operator opt-in): no namespaces; the launcher itself supervises.

The launcher is started ahead of need: it unshares, reports ``U`` and waits for a run, so a
run does not pay for an interpreter start-up. Status messages to the executor, one per line:
``U`` (ready for id maps), ``S <wait status> <wall ns> <cpu ns> <max rss KiB>`` (program
ended), ``T <wall ns>`` (wall time limit), ``E <text>`` (setup failed).
"""

from __future__ import annotations

import ctypes
import marshal
import os
import resource
import signal
import sys
import time
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACE_FLAGS = (
    CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
SOCK_FILTER_BYTES = 8  # struct sock_filter: u16 code, u8 jt, u8 jf, u32 k
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442  # same number on every arch
AT_FDCWD, AT_EMPTY_PATH, AT_RECURSIVE, OPEN_TREE_CLONE = -100, 0x1000, 0x8000, 1
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 1, 2, 4
SANDBOX_UID = 1000
ROOT_FS_SPARE_BYTES = 1 << 20
WORK_DIR = "/sandbox"
SOURCE_DIR = "/source"
DEVICES = ("null", "zero", "random", "urandom")
SYSTEM_DIRS = ("/usr", "/bin", "/lib", "/lib64", "/sbin")

_libc = ctypes.CDLL(None, use_errno=True)


class SetupError(Exception):
    """A sandbox could not be set up; reported to the executor as ``E``."""


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def _bind_readonly(source: str, target: str) -> None:
    _mount(source, target, None, MS_BIND | MS_REC)
    locked = os.statvfs(source).f_flag & (MS_NOEXEC | 1024 | 2048)  # noexec, noatime, nodiratime
    _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | locked)


class _MountAttr(ctypes.Structure):
    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


def _detached_readonly_tree(path: str) -> int:
    """``open_tree(OPEN_TREE_CLONE)`` of ``path``, made read-only, nosuid, nodev (Linux 5.12+)."""
    fd = int(_libc.syscall(SYS_OPEN_TREE, AT_FDCWD, path.encode(), OPEN_TREE_CLONE | AT_RECURSIVE))
    if fd < 0:
        _check(-1, f"open_tree {path}")
    attr = _MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0, 0)
    flags = AT_EMPTY_PATH | AT_RECURSIVE
    _check(
        _libc.syscall(SYS_MOUNT_SETATTR, fd, b"", flags, ctypes.byref(attr), ctypes.sizeof(attr)),
        f"mount_setattr {path}",
    )
    return fd


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def _install_seccomp(program: bytes) -> None:
    """Load the seccomp-bpf program the worker compiled (``taskfleet.sandbox.seccomp_policy``).

    Needs ``no_new_privs`` first. Inherited by every process the program starts, kept across
    ``execve``, and never removable: the last step before the untrusted code runs.
    """
    if not program or len(program) % SOCK_FILTER_BYTES:
        raise SetupError("seccomp: no filter program")  # never run the program unfiltered
    code = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // SOCK_FILTER_BYTES, ctypes.addressof(code))
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp")


def _needs_prefix_tree(argv: list[str]) -> bool:
    """Whether the interpreter's prefix lies outside the system dirs the root binds anyway.

    ``open_tree`` before ``unshare`` needs ``CAP_SYS_ADMIN`` on the host: a container worker
    without it (``/usr/local`` prefix) must not need it.
    """
    prefix = argv[4]
    return argv[3] == "namespaces" and not any(
        prefix == path or prefix.startswith(path + "/") for path in SYSTEM_DIRS
    )


def _send(fd: int, message: str) -> None:
    os.write(fd, f"{message}\n".encode())


def _build_root(root: str, config: dict[str, Any], source: bytes, prefix_fd: int) -> None:
    """Private root: tmpfs with read-only system binds, /dev nodes, /proc, work dir, source.

    ``prefix_fd`` is a detached read-only copy of the interpreter's prefix, cloned while still
    host root: the namespace's root is an unprivileged host uid and may not be able to walk to
    it (``/root/.pyenv``), and a plain bind cannot cross mount namespaces.
    """
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    size = 2 * len(source) + 4 * len(config["stdin"] or "") + ROOT_FS_SPARE_BYTES
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode=755")
    for path in SYSTEM_DIRS:
        if not os.path.lexists(path):
            continue
        if os.path.islink(path):
            os.symlink(os.readlink(path), root + path)
        else:
            os.makedirs(root + path)
            _bind_readonly(path, root + path)
    prefix = config["python_prefix"]
    if not os.path.exists(root + prefix):  # e.g. pyenv under /root: bind only the interpreter
        os.makedirs(root + prefix)
        _check(
            _libc.syscall(SYS_MOVE_MOUNT, prefix_fd, b"", AT_FDCWD, (root + prefix).encode(), 4),
            "attach the interpreter tree",
        )
    os.makedirs(root + "/dev")
    for name in DEVICES:
        open(f"{root}/dev/{name}", "wb").close()
        _mount(f"/dev/{name}", f"{root}/dev/{name}", None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0")):
        os.symlink(target, f"{root}/dev/{name}")
    os.symlink("/proc/self/fd/1", f"{root}/dev/stdout")
    os.symlink("/proc/self/fd/2", f"{root}/dev/stderr")
    os.makedirs(root + "/proc")
    if config["mount_proc"]:  # off: an empty /proc (a container whose /proc has masked paths)
        try:
            _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        except SetupError as exc:
            raise SetupError(
                f"{exc} (a masked /proc? TASKFLEET_SANDBOX_MOUNT_PROC=false)"
            ) from None
    os.makedirs(root + WORK_DIR)
    _mount("tmpfs", root + WORK_DIR, "tmpfs", MS_NOSUID | MS_NODEV, config["work_dir_mount"])
    os.chown(root + WORK_DIR, SANDBOX_UID, SANDBOX_UID)
    os.makedirs(root + SOURCE_DIR)
    with open(f"{root}{SOURCE_DIR}/main.py", "wb") as handle:
        handle.write(source)
    if config["stdin"] is not None:
        with open(f"{root}{SOURCE_DIR}/stdin", "wb") as handle:
            handle.write(config["stdin"].encode())
    os.chdir(root)
    _check(_libc.syscall(SYS_PIVOT_ROOT[os.uname().machine], b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "detach old root")
    os.chdir("/")
    _mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    _libc.sethostname(b"sandbox", 7)


def _run_source(script: str) -> int:
    """Run the program as ``__main__`` in this (forked, already started, filtered) interpreter.

    Forking the waiting launcher instead of exec-ing a fresh interpreter saves an interpreter
    start-up per run; the launcher holds nothing secret (empty environment, no worker state).
    """
    import builtins
    import types

    main_module = types.ModuleType("__main__")
    main_module.__file__ = script
    main_module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = main_module
    sys.argv = sys.orig_argv = [script]
    try:
        with open(script, "rb") as handle:
            code = compile(handle.read(), script, "exec")
        exec(code, main_module.__dict__)  # noqa: S102 - this process is the sandboxed program
        status = 0
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException as exc:
        import traceback

        tb = exc.__traceback__.tb_next if exc.__traceback__ else None  # hide this frame
        traceback.print_exception(type(exc), exc, tb)
        status = 1
    if "threading" in sys.modules:
        sys.modules["threading"]._shutdown()
    import atexit

    atexit._run_exitfuncs()
    return status


def _exec_program(config: dict[str, Any], status_fd: int, uid: int, work_dir: str) -> None:
    """In the forked program process: limits, credentials, fds, then run the source."""
    try:
        os.setsid()
        os.chdir(work_dir)
        stdin = os.open(config["stdin_path"] or "/dev/null", os.O_RDONLY)
        os.dup2(stdin, 0)
        os.close(stdin)
        for name, value in config["rlimits"].items():
            soft, hard = (value, value) if name != "RLIMIT_CPU" else (value, value + 1)
            resource.setrlimit(getattr(resource, name), (soft, hard))
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        os.closerange(3, 65536)
        os.environ.clear()
        os.environ.update(config["env"])
        _install_seccomp(config["seccomp_bpf"])
    except BaseException as exc:
        _send(status_fd, f"E program start failed: {exc}")
        os._exit(127)
    status = _run_source(config["script"])
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            status = status or 120
    os._exit(status & 0xFF)


def _supervise(config: dict[str, Any], status_fd: int, uid: int, work_dir: str) -> None:
    """Fork the program, wait for it (reaping orphans as init), enforce its wall time."""
    started = time.monotonic_ns()
    program = os.fork()
    if program == 0:
        _exec_program(config, status_fd, uid, work_dir)
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)

    def _wall_time_up(*_: object) -> None:
        _send(status_fd, f"T {time.monotonic_ns() - started}")
        if not config["isolated"]:
            os.killpg(program, signal.SIGKILL)
        os._exit(0)

    signal.signal(signal.SIGALRM, _wall_time_up)
    signal.setitimer(signal.ITIMER_REAL, config["wall_time_s"])
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == program:
            signal.setitimer(signal.ITIMER_REAL, 0)
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu_ns = int((usage.ru_utime + usage.ru_stime) * 1e9)
            _send(
                status_fd, f"S {status} {time.monotonic_ns() - started} {cpu_ns} {usage.ru_maxrss}"
            )
            os._exit(0)


def _isolated(config: dict[str, Any], source: bytes, status_fd: int, prefix_fd: int) -> None:
    init = os.fork()
    if init != 0:  # the launcher: wait for init, then leave
        os.waitpid(init, 0)
        os._exit(0)
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    _libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # /proc/<init> owned by its uid: host sweeps see it
    _build_root(config["root"], config, source, prefix_fd)
    if prefix_fd >= 0:
        os.close(prefix_fd)
    config["script"] = f"{SOURCE_DIR}/main.py"
    config["stdin_path"] = f"{SOURCE_DIR}/stdin" if config["stdin"] is not None else None
    _supervise(config, status_fd, SANDBOX_UID, WORK_DIR)


def main(argv: list[str]) -> None:
    """Entry point: handshake with the executor, then run the sandbox in the requested mode."""
    status_fd, control_fd = int(argv[1]), int(argv[2])
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    isolated = argv[3] == "namespaces"
    try:
        prefix_fd = _detached_readonly_tree(argv[4]) if _needs_prefix_tree(argv) else -1
        if isolated:
            _check(_libc.unshare(NAMESPACE_FLAGS), "unshare")
        _send(status_fd, "U")
        with os.fdopen(control_fd, "rb") as control:
            # marshal, not json: importing json costs tens of ms per start; this pipe is private
            # to the executor and carries only its own dict of str/int/float/None.
            request = marshal.loads(control.read())  # noqa: S302
        config, source = request["config"], request["source"].encode()
        if isolated:
            _isolated(config, source, status_fd, prefix_fd)
        else:
            _supervise(config, status_fd, config["host_uid"], config["host_work_dir"])
    except BaseException as exc:
        _send(status_fd, f"E sandbox setup failed: {type(exc).__name__}: {exc}")
        os._exit(126)


if __name__ == "__main__":
    main(sys.argv)
