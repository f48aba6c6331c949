"""The seccomp policy as data and compiled: both architectures, and any other one refused."""

from __future__ import annotations

import struct
import sys

import pytest

from taskfleet.config.sandbox import load_sandbox_settings
from taskfleet.sandbox import launcher, seccomp_policy
from taskfleet.sandbox.executor import SandboxExecutor
from taskfleet.sandbox.seccomp_policy import (
    ALLOWED,
    ENOSYS_SYSCALLS,
    REFUSED,
    UnsupportedArchitecture,
    compile_filter,
    describe,
)

#: ``AUDIT_ARCH_*``: the first check of a filter compares the call's ABI with these.
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
#: The issue's list: each must be refused by the policy (tests/support/seccomp_vectors.py
#: calls each from inside a real run).
ISSUE_19 = {
    "io_uring_setup", "io_uring_enter", "io_uring_register", "bpf", "perf_event_open",
    "userfaultfd", "keyctl", "add_key", "request_key", "ptrace", "process_vm_readv",
    "process_vm_writev", "mount", "umount2", "pivot_root", "chroot", "setns", "unshare",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot",
    "swapon", "swapoff", "acct", "open_by_handle_at",
}  # fmt: skip


def _instructions(program: bytes) -> list[tuple[int, int, int, int]]:
    return list(struct.iter_unpack("=HBBI", program))


def test_the_policy_refuses_what_the_issue_lists_and_allows_none_of_it() -> None:
    assert set(REFUSED) >= ISSUE_19
    assert not set(REFUSED) & set(ALLOWED)
    assert not set(ENOSYS_SYSCALLS) & set(ALLOWED)
    assert {"clone", "clone3", "personality"}.isdisjoint(ALLOWED)  # argument-filtered
    assert len(ALLOWED) == len(set(ALLOWED))


@pytest.mark.parametrize("arch", sorted(AUDIT_ARCH))
def test_compiles_for_both_architectures(arch: str) -> None:
    program = compile_filter(arch)
    assert len(program) % launcher.SOCK_FILTER_BYTES == 0
    assert any(k == AUDIT_ARCH[arch] for _, _, _, k in _instructions(program))
    assert not any(k == AUDIT_ARCH[other] for other in AUDIT_ARCH.keys() - {arch}
                   for _, _, _, k in _instructions(program))  # fmt: skip
    pseudo = describe(arch)
    for name in ("unshare", "ptrace", "io_uring_setup", "mount", "add_key"):
        assert f'"{name}"' not in pseudo  # no rule: the default (EPERM) refuses it
    assert '"read"' in pseudo
    assert "ERRNO(38)" in pseudo  # clone3


@pytest.mark.parametrize("arch", ["riscv64", "armv7l", "i686", "ppc64le", "s390x"])
def test_an_unknown_architecture_is_refused_loudly(arch: str) -> None:
    with pytest.raises(UnsupportedArchitecture, match=rf"no seccomp policy for the '{arch}'"):
        compile_filter(arch)


def test_the_executor_refuses_to_run_without_a_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seccomp_policy, "machine", lambda: "riscv64")
    result = SandboxExecutor(load_sandbox_settings(allow_degraded=True), prestart=False).run(
        {"source": "print('never')"}
    )
    assert result.status == "rejected"
    assert result.error is not None
    assert "no seccomp policy for the 'riscv64' architecture" in result.error
    assert "without their syscall filter" in result.error


def test_the_launcher_refuses_an_empty_filter() -> None:
    for program in (b"", b"\x00" * 7):
        with pytest.raises(launcher.SetupError, match="no filter program"):
            launcher._install_seccomp(program)


def test_without_libseccomp_the_executor_refuses_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pyseccomp", None)  # import pyseccomp now fails
    seccomp_policy._compiled.cache_clear()
    try:
        result = SandboxExecutor(load_sandbox_settings(), prestart=False).run({"source": "pass"})
    finally:
        seccomp_policy._compiled.cache_clear()
    assert result.status == "rejected"
    assert result.error is not None
    assert "libseccomp cannot be loaded" in result.error
