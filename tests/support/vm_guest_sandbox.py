"""Runs inside the VM of ``tests/support/vm.py``: sandbox runs with a delegated cgroup v2.

The guest is root on a kernel where cgroup v2 holds every controller, so the executor's
``TASKFLEET_SANDBOX_CGROUP_ROOT`` is real: each run gets its own cgroup. Each case's result
(the executor's JSON) goes to ``$TF_SHARE/results.json`` for the host test to judge.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from taskfleet.config.sandbox import load_sandbox_settings
from taskfleet.sandbox import SandboxExecutor
from taskfleet.sandbox import executor as executor_module

MIB = 1024 * 1024
CGROUP_ROOT = Path("/sys/fs/cgroup/taskfleet-sandbox")
RUN_CPUS = 0.5
CPU_HOG_S = 3.0
THROTTLE_POLL_S = 0.05

#: Six processes of 64 MiB each: every one is under the per-process 128 MiB, the run is not.
MEMORY_ACROSS_PROCESSES = """
import os, time
children = []
for _ in range(6):
    pid = os.fork()
    if pid == 0:
        block = bytearray(64 << 20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        time.sleep(60)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
print("all six held 64 MiB")
"""
FORK_BOMB = "import os\nwhile True:\n    os.fork()"
#: Four busy processes for CPU_HOG_S of wall time; the parent waits, so rusage counts them all.
CPU_HOG = f"""
import os, time
end = time.monotonic() + {CPU_HOG_S}
children = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        while time.monotonic() < end:
            pass
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
print("done")
"""

#: The guest is emulated (TCG) and niced on a host whose two cores run the suite: an
#: interpreter start there can take longer than the executor's handshake allows a real host,
#: and a case longer than its default wall time. Each case must end by its own limit, so
#: the guest's clocks are generous (timings are not what these cases check).
GUEST_HANDSHAKE_TIMEOUT_S = 300.0
GUEST_WALL_S = 600.0
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "first_ok": ("print('hello')", {"wall_time_s": GUEST_WALL_S}),
    "memory_across_processes": (
        MEMORY_ACROSS_PROCESSES,
        {"memory_bytes": 128 * MIB, "processes": 16, "wall_time_s": GUEST_WALL_S},
    ),
    "fork_bomb": (FORK_BOMB, {"processes": 8, "wall_time_s": GUEST_WALL_S}),
    "cpu_hog": (CPU_HOG, {"processes": 8, "wall_time_s": GUEST_WALL_S, "cpu_time_s": 30}),
    "last_ok": ("print('still here')", {"wall_time_s": GUEST_WALL_S}),
}


class ThrottleWatch(threading.Thread):
    """The most ``nr_throttled`` seen in any run's ``cpu.stat`` while it runs (the run's
    cgroup is removed at its end, so it is read during the run)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.most = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(THROTTLE_POLL_S):
            for stat in CGROUP_ROOT.glob("run-*/cpu.stat"):
                with contextlib.suppress(OSError, ValueError):
                    fields = dict(line.split() for line in stat.read_text().splitlines())
                    self.most = max(self.most, int(fields.get("nr_throttled", 0)))


def main() -> None:
    """Run every case in one executor, then list what is left under the cgroup root."""
    executor_module.HANDSHAKE_TIMEOUT_S = GUEST_HANDSHAKE_TIMEOUT_S
    settings = load_sandbox_settings(
        cgroup_root=str(CGROUP_ROOT), cgroup_cpus=RUN_CPUS, max_wall_time_s=GUEST_WALL_S
    )
    executor = SandboxExecutor(settings)
    report: dict[str, Any] = {
        "note": executor.cgroups.note(),
        "cases": {},
        "throttled": {},
        "left_after": {},
    }
    try:
        for name, (source, limits) in CASES.items():
            watch = ThrottleWatch()
            watch.start()
            result = executor.run({"source": source, "limits": limits})
            watch.done.set()
            watch.join()
            report["cases"][name] = result.model_dump(mode="json")
            report["throttled"][name] = watch.most
            report["left_after"][name] = sorted(p.name for p in CGROUP_ROOT.iterdir() if p.is_dir())
    finally:
        executor.close()
    report["left_under_root"] = sorted(p.name for p in CGROUP_ROOT.iterdir() if p.is_dir())
    report["run_cpus"] = RUN_CPUS
    Path(os.environ["TF_SHARE"], "results.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
