"""Run caller-supplied Python in a sandbox and report what happened.

The worker never runs the code: it starts the launcher (``taskfleet.sandbox.launcher``) with
an empty environment and only fds 0-2 plus two handshake pipes, moves it into the run's own
cgroup where it has a delegated one (``cgroups``), installs the id maps, sends the program with
the compiled seccomp filter (``seccomp_policy``), then reads stdout/stderr keeping at most the
output limit. Whatever the program does, the run ends at its wall-time limit plus a grace (or
a whole-run cgroup limit), and a sweep of the run's host uids makes sure nothing outlives it. One launcher is kept started ahead of need (``warm``), so a
run does not wait for an interpreter to start.
"""

from __future__ import annotations

import atexit
import marshal
import os
import resource
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from taskfleet.config.sandbox import SandboxSettings, get_sandbox_settings
from taskfleet.sandbox.cgroups import RunCgroup, probe
from taskfleet.sandbox.isolation import IsolationUnavailable, choose_mode, sweep
from taskfleet.sandbox.limits import LimitName, RequestError, SandboxLimits, parse_request
from taskfleet.sandbox.outcome import RunState, build_result
from taskfleet.sandbox.result import Mode, SandboxResult
from taskfleet.sandbox.seccomp_policy import FilterUnavailable, compile_filter
from taskfleet.sandbox.warm import Launcher, LauncherPool, kill_group

#: Past the program's wall-time limit (enforced by the sandbox's init), the executor kills.
KILL_GRACE_S = 2.0
#: How long a launcher may take to start and unshare (an interpreter start on a busy host).
HANDSHAKE_TIMEOUT_S = 15.0
READ_CHUNK = 65536
SANDBOX_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/sandbox", "TMPDIR": "/sandbox", "LANG": "C.UTF-8"}


def _program_ended(status: bytes | bytearray) -> bool:
    return any(line[:2] in (b"S ", b"T ") for line in status.splitlines())


class SandboxExecutor:
    """Runs sandbox requests; thread-safe (each run gets its own launcher)."""

    def __init__(self, settings: SandboxSettings | None = None, *, prestart: bool = True) -> None:
        self.settings = settings or get_sandbox_settings()
        self.python = os.path.realpath(sys.executable)
        self.base_dir = Path(self.settings.base_dir)
        self.prestart = prestart
        self.cgroups = probe(self.settings.cgroup_root)
        self.launchers = LauncherPool(self.settings, self.python, self.base_dir)
        atexit.register(self.close)

    def close(self) -> None:
        """Stop the launcher kept ready, if any."""
        self.launchers.close()

    def run(self, payload: Any) -> SandboxResult:
        """Validate a raw payload and run it; a bad payload gives a ``rejected`` result."""
        try:
            request, limits = parse_request(payload, self.settings)
            mode = choose_mode(self.settings)
            compile_filter()
        except (RequestError, IsolationUnavailable, FilterUnavailable) as exc:
            return SandboxResult.rejected(str(exc))
        return self.run_checked(request.source, request.stdin, limits, mode)

    def run_checked(
        self, source: str, stdin: str | None, limits: SandboxLimits, mode: Mode
    ) -> SandboxResult:
        """Run an already validated program in ``mode``."""
        started = time.monotonic()
        try:
            cgroup = self._cgroup(limits)
        except OSError as exc:
            return SandboxResult(status="sandbox_error", error=f"run cgroup: {exc}", mode=mode)
        proc_launcher = self.launchers.take(mode)
        run = RunState.start(limits, mode, proc_launcher.ids)
        run.cgroup, run.limits_note = cgroup, self.cgroups.note()
        run_dir = self._prepare_host_dirs(run, source, stdin)
        try:
            rusage = self._drive(proc_launcher, run, source, stdin, run_dir)
        finally:
            if cgroup is not None:  # closed (and removed) however the run ended
                breached = cgroup.close()
                run.killed_for = run.killed_for or breached
            if run_dir is not None:
                shutil.rmtree(run_dir, ignore_errors=True)
            if self.prestart:
                self.launchers.prestart(mode)
        return build_result(run, rusage, time.monotonic() - started)

    def _cgroup(self, limits: SandboxLimits) -> RunCgroup | None:
        """The run's own cgroup where the worker has a delegated one (``cgroups``)."""
        if self.cgroups.root is None:
            return None
        return RunCgroup.create(self.cgroups.root, limits, self.settings.cgroup_cpus)

    # -- one run -----------------------------------------------------------------------------

    def _prepare_host_dirs(self, run: RunState, source: str, stdin: str | None) -> Path | None:
        """Rlimits-only mode runs on the host: a private dir owned by the run's uid."""
        if run.mode == "namespaces":
            return None
        run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=self.base_dir))
        run_dir.chmod(0o711)
        (run_dir / "work").mkdir(mode=0o700)
        os.chown(run_dir / "work", run.ids.program, run.ids.program)
        for name, text in (("main.py", source), ("stdin", stdin or "")):
            (run_dir / name).write_text(text)
            (run_dir / name).chmod(0o444)
        return run_dir

    def _config(self, run: RunState, stdin: str | None, run_dir: Path | None) -> dict[str, Any]:
        return {
            "isolated": run.mode == "namespaces",
            "root": str(self.base_dir / "root"),
            "python": self.python,
            "python_prefix": sys.base_prefix,
            "work_dir_mount": f"size={self.settings.work_dir_bytes},mode=700",
            "mount_proc": self.settings.mount_proc,
            "rlimits": run.limits.rlimits(),
            "seccomp_bpf": compile_filter(),
            "env": SANDBOX_ENV,
            "wall_time_s": run.limits.wall_time_s,
            "stdin": stdin,
            "host_uid": run.ids.program,
            "host_work_dir": str(run_dir / "work") if run_dir else None,
            "script": str(run_dir / "main.py") if run_dir else None,
            "stdin_path": str(run_dir / "stdin") if run_dir and stdin is not None else None,
        }

    def _drive(
        self, ready: Launcher, run: RunState, source: str, stdin: str | None, run_dir: Path | None
    ) -> resource.struct_rusage | None:
        proc = ready.proc
        try:
            if self._handshake(ready, run, self._config(run, stdin, run_dir), source):
                deadline = time.monotonic() + run.limits.wall_time_s + KILL_GRACE_S
                self._capture(ready, run, deadline)
        finally:
            os.close(ready.status_r)
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()
            rusage = self._reap(proc, run)
        return rusage

    def _handshake(
        self, ready: Launcher, run: RunState, config: dict[str, Any], source: str
    ) -> bool:
        """Wait for ``U``, install id maps, send config and source. False if that failed."""
        with selectors.DefaultSelector() as selector:
            selector.register(ready.status_r, selectors.EVENT_READ)
            chunk = os.read(ready.status_r, 2) if selector.select(HANDSHAKE_TIMEOUT_S) else b""
        run.status += chunk
        try:
            if not chunk.startswith(b"U"):
                raise OSError("the launcher did not start")
            if run.cgroup is not None:
                run.cgroup.attach(ready.proc.pid)  # before it forks: the whole run is in it
            if run.mode == "namespaces":
                run.ids.write_maps(ready.proc.pid)
            with os.fdopen(ready.control_w, "wb") as control:
                control.write(marshal.dumps({"config": config, "source": source}))
        except OSError as exc:
            run.status += f"\nE starting the sandbox failed: {exc}\n".encode()
            self._kill(ready.proc, run)
            return False
        return True

    def _capture(self, ready: Launcher, run: RunState, deadline: float) -> None:
        """Read stdout, stderr and status until all close, killing the run at a limit."""
        proc = ready.proc
        assert proc.stdout is not None
        assert proc.stderr is not None
        streams = {proc.stdout.fileno(): run.stdout, proc.stderr.fileno(): run.stderr}
        with selectors.DefaultSelector() as selector:
            for fd in [*streams, ready.status_r]:
                selector.register(fd, selectors.EVENT_READ)
            while selector.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._kill(proc, run, "wall_time")
                    deadline = float("inf")
                    continue
                events = selector.select(min(remaining, 1.0))
                breached = run.cgroup.breached() if run.cgroup and not events else None
                if breached and run.killed_for is None:  # pids.max: a fork failed somewhere
                    self._kill(proc, run, breached)
                for key, _ in events:
                    fd = int(key.fd)
                    chunk = os.read(fd, READ_CHUNK)
                    if not chunk:
                        selector.unregister(fd)
                    elif fd == ready.status_r:
                        run.status += chunk
                        if run.mode == "rlimits_only" and _program_ended(run.status):
                            sweep(run.ids)  # no PID namespace: orphans die by uid
                    elif not streams[fd].feed(chunk) and run.killed_for is None:
                        self._kill(proc, run, "output")

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes], run: RunState, limit: LimitName | None = None) -> None:
        """Kill the launcher's group (the namespace's init with it) and every run process."""
        run.killed_for = run.killed_for or limit
        if run.cgroup is not None:
            run.cgroup.kill()
        kill_group(proc.pid)
        sweep(run.ids)

    @staticmethod
    def _reap(proc: subprocess.Popen[bytes], run: RunState) -> resource.struct_rusage | None:
        try:
            _, wait_status, rusage = os.wait4(proc.pid, 0)
        except ChildProcessError:
            return None
        proc.returncode = os.waitstatus_to_exitcode(wait_status)
        if run.mode == "rlimits_only" or run.killed_for is not None:
            sweep(run.ids)
        return rusage
