"""Scenarios that hit a worker: SIGKILL (prefork, gevent, solo, one pool process), SIGTERM.

Each fleet runs two workers of the kind under test (one for the pool-process kill), so a
survivor can take over the victim's jobs once they are handed back. The victim is chosen
while it runs at least one job, so every kill lands mid-execution.
"""

from __future__ import annotations

import os
import signal

from bench.chaos.fleet import ChaosFleet, Proc
from bench.chaos.load import KIND_IO
from bench.chaos.report import Row
from bench.chaos.run import ChaosRun, Size, Waiter, now, poll, since

SOLO_ENV = {"TASKFLEET_CPU_POOL": "solo"}
KILL_RECOVERY = (
    "from the SIGKILL to the first completion (SUCCESS logged) of a job that was running on "
    "the killed worker; its jobs must all complete within the recovery deadline"
)
POOL_KILL_RECOVERY = (
    "from the SIGKILL of the pool process to the completion of the job it was running "
    "(re-run by a new pool process)"
)
TERM_RECOVERY = (
    "from the SIGTERM to the worker's exit (warm shutdown: its running jobs finish first, "
    "by the same process; nothing else runs twice)"
)


def _kill_one_of_two(
    name: str, size: Size, waiter: Waiter, *, io: bool = False, solo: bool = False
) -> Row:
    """Two workers under load; SIGKILL the whole tree of one while it runs jobs."""
    row = Row(name, KILL_RECOVERY)
    with ChaosRun(name, size, waiter, kind=KIND_IO if io else "diag.record") as run:
        extra = SOLO_ENV if solo else {}
        if io:
            victim, _ = run.io_worker("io-victim"), run.io_worker("io-survivor")
        else:
            victim = run.cpu_worker("cpu-victim", **extra)
            run.cpu_worker("cpu-survivor", **extra)
        run.fleet.wait_ready()
        run.producer.backlog(size.jobs)
        run.producer.start(size.rate)
        run.running_on(victim)
        pids = victim.tree()
        ChaosFleet.kill_tree(victim, pids)
        fault_at = now()  # jobs started before this ran in a process that is now dead
        _await_affected(run, row, pids, fault_at, "killed worker")
        return run.count(row)


def _await_affected(run: ChaosRun, row: Row, pids: set[int], fault_at: float, what: str) -> None:
    """Wait for the jobs that ran in ``pids`` at the fault to succeed; note the recovery."""
    affected = run.ledger.executions().running_on(pids, before=fault_at)
    row.mid_execution = len(affected)
    row.extra["affected"] = sorted(affected)
    done = run.await_jobs(affected, f"the {len(affected)} jobs of the {what} to complete")
    row.recover_s = since(fault_at, run.ledger.executions().first_done_after(fault_at, affected))
    if not done:
        row.recover_s = None
        row.problems.append(f"{what}'s jobs not done within {run.size.recover_s:.0f}s")


def kill_cpu_main(size: Size, waiter: Waiter = poll) -> Row:
    """SIGKILL a prefork worker's main process and its pool processes; a second one runs on."""
    return _kill_one_of_two("kill-prefork-worker", size, waiter)


def kill_io_worker(size: Size, waiter: Waiter = poll) -> Row:
    """SIGKILL a gevent worker (its jobs are greenlets of the main process)."""
    return _kill_one_of_two("kill-gevent-worker", size, waiter, io=True)


def kill_solo_worker(size: Size, waiter: Waiter = poll) -> Row:
    """SIGKILL a solo worker (``TASKFLEET_CPU_POOL=solo``) while a second one runs on."""
    return _kill_one_of_two("kill-solo-worker", size, waiter, solo=True)


def kill_pool_process(size: Size, waiter: Waiter = poll) -> Row:
    """SIGKILL one prefork pool process while it runs a job; the worker replaces it."""
    name = "kill-pool-process"
    row = Row(name, POOL_KILL_RECOVERY)
    with ChaosRun(name, size, waiter) as run:
        worker = run.cpu_worker("cpu")
        run.fleet.wait_ready()
        run.producer.backlog(size.jobs)
        run.producer.start(size.rate)
        job_id = sorted(run.running_on(worker, exclude_main=True))[0]
        pid = int(run.ledger.executions().starts[job_id][-1]["pid"])
        os.kill(pid, signal.SIGKILL)
        fault_at = now()
        _await_affected(run, row, {pid}, fault_at, "killed pool process")
        if not worker.alive():
            row.problems.append("the worker died with its pool process")
        return run.count(row)


def term_worker(size: Size, waiter: Waiter = poll) -> Row:
    """SIGTERM a prefork worker mid-run: running jobs finish, the rest go to the other one."""
    name = "sigterm-warm-shutdown"
    row = Row(name, TERM_RECOVERY)
    with ChaosRun(name, size, waiter) as run:
        victim = run.cpu_worker("cpu-victim")
        run.cpu_worker("cpu-survivor")
        run.fleet.wait_ready()
        run.producer.backlog(size.jobs)
        run.producer.start(size.rate)
        run.running_on(victim)
        pids = victim.tree()
        fault_at = now()
        victim.popen.send_signal(signal.SIGTERM)
        exited = waiter(lambda: not victim.alive(), size.recover_s, "the worker to shut down")
        row.recover_s = since(fault_at, now()) if exited is not False else None
        if exited is False:
            row.problems.append(f"still running {size.recover_s:.0f}s after SIGTERM")
        _check_finished_in_place(run, row, victim, pids, fault_at)
        return run.count(row)


def _check_finished_in_place(
    run: ChaosRun, row: Row, victim: Proc, pids: set[int], fault_at: float
) -> None:
    """Every job running at the SIGTERM ended in the process that ran it."""
    executions = run.ledger.executions()
    running = executions.running_on(pids, before=fault_at)
    unfinished = executions.running_on(pids) & running
    row.extra["running_at_sigterm"] = sorted(running)
    row.notes.append(f"{len(running)} running at SIGTERM, {len(unfinished)} cut short")
    if unfinished:
        row.problems.append(f"{len(unfinished)} running jobs did not finish on {victim.name}")
