"""C1: what one job costs, per component: broker operations, bytes on the wire, CPU.

taskfleet as shipped (``bench.systems.taskfleet``: a prefork CPU worker of ``procs``
processes, its persister and heartbeat sidecar) runs N no-op jobs published by one
``enqueue_many``, until every result is in Postgres. Around that run, snapshots of:

* Redis: ``INFO commandstats`` (calls and server CPU per command), ``INFO stats`` (bytes in
  and out), ``INFO cpu`` (the server's CPU);
* the worker's process tree, CPU by role (``psutil``): the prefork parent, the pool
  processes, the persister, the heartbeat sidecar;
* the producer's own CPU (``time.process_time`` around the publish);
* PostgreSQL: the CPU of every ``postgres`` process on the host (the bench's server is the
  only busy one). Not ``pg_stat_database``: a backend flushes its counters there only when
  idle for a while, so they lag a run of a few seconds.

Divided by N, these give the per-job figures the scale-out model in ``BENCHMARKS.md`` rests
on. CPU time, not wall time: what a component spends is what limits how many jobs per second
one core of it can carry, whatever else the machine is doing.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import psutil  # type: ignore[import-untyped]
import psycopg
import redis

from bench.report import Table
from bench.services import services
from bench.systems.taskfleet import TaskfleetSystem
from bench.workloads.base import Options, log, with_workers

WORKLOAD = "C1"
QUICK_N = 1_000
#: Commands below this many calls per job are summed into "other".
MIN_CALLS_PER_JOB = 0.01
#: After the last row: the persister's acknowledgements of its last batch.
SETTLE_S = 0.5
#: How often the run looks for its last result in Postgres.
POLL_S = 0.25
Snapshot = dict[str, Any]


ROLES = ("parent", "pool", "persister", "sidecar")


def _role_processes(system: TaskfleetSystem) -> list[tuple[str, psutil.Process]]:
    """Each live process of the worker trees with its role."""
    found = []
    roots = {p.pid for p in system.workers.procs}
    for pid in system.workers._tree_pids():
        try:
            proc = psutil.Process(pid)
            cmdline = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if pid in roots:
            role = "parent"
        elif "persister" in cmdline or "sharding.service" in cmdline:
            role = "persister"
        elif "sidecar" in cmdline:
            role = "sidecar"
        else:
            role = "pool"
        found.append((role, proc))
    return found


def _roles(system: TaskfleetSystem) -> dict[str, float]:
    """CPU seconds so far of each role in the worker trees."""
    cpu = dict.fromkeys(ROLES, 0.0)
    for role, proc in _role_processes(system):
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        cpu[role] += times.user + times.system
    return cpu


def _memory(system: TaskfleetSystem) -> dict[str, dict[str, float]]:
    """Per role: processes, and MiB resident (RSS), unique (USS) and proportional (PSS)."""
    memory = {role: {"processes": 0.0, "rss": 0.0, "uss": 0.0, "pss": 0.0} for role in ROLES}
    for role, proc in _role_processes(system):
        try:
            info = proc.memory_full_info()
        except psutil.Error:
            continue
        entry = memory[role]
        entry["processes"] += 1
        for field in ("rss", "uss", "pss"):
            entry[field] += getattr(info, field) / 2**20
    return memory


def _postgres_cpu() -> float:
    total = 0.0
    for proc in psutil.process_iter(["name", "cpu_times"]):
        name = proc.info.get("name") or ""
        times = proc.info.get("cpu_times")
        if name.startswith("postgres") and times is not None:
            total += times.user + times.system
    return total


def _snapshot(system: TaskfleetSystem, server: redis.Redis) -> Snapshot:
    stats = server.info("stats")
    cpu = server.info("cpu")
    return {
        "commands": {
            name.removeprefix("cmdstat_"): (int(v["calls"]), float(v["usec"]))
            for name, v in server.info("commandstats").items()
        },
        "net_in": int(stats["total_net_input_bytes"]),
        "net_out": int(stats["total_net_output_bytes"]),
        "redis_cpu": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
        "roles": _roles(system),
        "postgres_cpu": _postgres_cpu(),
    }


def _one_run(system: TaskfleetSystem, n: int) -> dict[str, Any]:
    """Publish ``n`` jobs, wait until all are in Postgres; the per-job deltas."""
    from bench.common import completion_timeout, poll_until
    from bench.services import count_rows
    from bench.systems.taskfleet import RESULTS_TABLE

    server = redis.Redis.from_url(system.url)
    with psycopg.connect(services().libpq_url, autocommit=True) as pg:
        before = _snapshot(system, server)
        started = time.perf_counter()
        produced = time.process_time()
        system.publish(n)
        producer_s = time.process_time() - produced
        # Not ``wait_all``: its polling of every result key (EXISTS) would be counted as the
        # jobs' Redis traffic. A row count in Postgres every POLL_S costs next to nothing.
        target = system._durable_baseline + n
        poll_until(
            lambda: count_rows(pg, RESULTS_TABLE) >= target,
            completion_timeout(n),
            f"{n} results in Postgres",
            interval=POLL_S,
        )
        del started
        time.sleep(SETTLE_S)  # the persister's last acks land in Redis's counters
        after = _snapshot(system, server)
        memory = _memory(system)
    server.close()
    calls = {
        name: (c - before["commands"].get(name, (0, 0.0))[0]) / n
        for name, (c, _) in after["commands"].items()
    }
    redis_us = {
        name: (u - before["commands"].get(name, (0, 0.0))[1]) / n
        for name, (_, u) in after["commands"].items()
    }
    us = 1e6 / n
    return {
        "calls": {k: v for k, v in calls.items() if v > 0},
        "command_us": {k: v for k, v in redis_us.items() if v > 0},
        "bytes_in": (after["net_in"] - before["net_in"]) / n,
        "bytes_out": (after["net_out"] - before["net_out"]) / n,
        "cpu_us": {
            "producer": producer_s * us,
            **{
                role: (after["roles"][role] - before["roles"][role]) * us for role in after["roles"]
            },
            "redis": (after["redis_cpu"] - before["redis_cpu"]) * us,
            "postgres": (after["postgres_cpu"] - before["postgres_cpu"]) * us,
        },
        "memory": memory,
    }


def _median(runs: list[dict[str, Any]], *path: str) -> float:
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value.get(key, 0.0) if isinstance(value, dict) else 0.0
        values.append(float(value))
    return statistics.median(values)


def table(options: Options) -> Table:
    """Measure C1 and lay it out: one row per figure."""
    n = QUICK_N if options.quick else options.n
    system = TaskfleetSystem()
    runs = []
    for index in range(options.runs):
        log.info("C1 run %d/%d", index + 1, options.runs)
        runs.append(with_workers(system, options.procs, lambda s: _one_run(s, n)))  # type: ignore[arg-type]
    result = Table(
        WORKLOAD,
        f"cost per job, taskfleet as shipped, {n:,} no-op jobs, {options.procs} worker "
        f"processes, until every result is in Postgres (medians of {len(runs)} runs)",
        ["figure", "per job"],
        notes=[
            "CPU in µs of CPU time (user + system) per job, by component; Redis per command "
            "from `INFO commandstats` (the server's own time inside each command).",
            "Bytes: Redis's `total_net_input_bytes` / `total_net_output_bytes` per job "
            "(every client: producer, worker, persister, sidecar).",
        ],
    )
    commands = sorted(
        {k for run in runs for k in run["calls"]},
        key=lambda k: -_median(runs, "calls", k),
    )
    other_calls = 0.0
    for name in commands:
        per_job = _median(runs, "calls", name)
        if per_job < MIN_CALLS_PER_JOB:
            other_calls += per_job
            continue
        cost = _median(runs, "command_us", name)
        result.rows.append([f"Redis `{name.upper()}`", f"{per_job:.2f} calls, {cost:.1f} µs"])
    result.rows.append(["Redis, other commands", f"{other_calls:.2f} calls"])
    total_calls = sum(_median(runs, "calls", name) for name in commands)
    result.rows.append(["Redis commands, all", f"{total_calls:.2f}"])
    result.rows.append(["Redis bytes in / out", f"{_median(runs, 'bytes_in'):,.0f} / "
                        f"{_median(runs, 'bytes_out'):,.0f}"])  # fmt: skip
    for role in ("producer", "parent", "pool", "persister", "sidecar", "redis", "postgres"):
        result.rows.append([f"CPU µs: {role}", f"{_median(runs, 'cpu_us', role):.1f}"])
    total = sum(_median(runs, "cpu_us", r) for r in runs[0]["cpu_us"])
    result.rows.append(["CPU µs: all", f"{total:.1f}"])
    for role in ROLES:
        procs = _median(runs, "memory", role, "processes")
        rss, uss, pss = (_median(runs, "memory", role, f) for f in ("rss", "uss", "pss"))
        result.rows.append(
            [f"memory MiB after the run: {role} ({procs:.0f} processes)",
             f"RSS {rss:.0f}, USS {uss:.0f}, PSS {pss:.0f}"]
        )  # fmt: skip
    totals = [sum(_median(runs, "memory", r, f) for r in ROLES) for f in ("rss", "uss", "pss")]
    result.rows.append(
        ["memory MiB after the run: worker tree", "RSS {:.0f}, USS {:.0f}, PSS {:.0f}".format(*totals)]
    )  # fmt: skip
    result.raw.extend(runs)
    return result
