"""Scenarios that hit a service: Redis crash-restart, RabbitMQ restart, Postgres down.

Redis and Postgres are the scenario's own (temp dir, free loopback port). RabbitMQ is the
machine's shared node: the scenario restarts its app (``rabbitmqctl stop_app`` /
``start_app``), uses queue names of its own and deletes them at the end.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from bench.chaos.report import Row
from bench.chaos.run import ChaosRun, Size, Waiter, now, poll, since

AMQP_URL_ENV = "TASKFLEET_TEST_AMQP_URL"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
RABBITMQCTL = "rabbitmqctl"
LOOPBACK = "127.0.0.1"
AMQP_PORT = 5672
PROBE_TIMEOUT_S = 1.0
RABBITMQCTL_TIMEOUT_S = 120.0
REDIS_RECOVERY = (
    "from the SIGKILL of redis-server (restarted on the same port from its AOF, "
    "appendfsync always) to the first job completing after it answers again"
)
RABBITMQ_RECOVERY = (
    "from `rabbitmqctl stop_app` to the first job completing after `start_app` and "
    "`await_startup` return"
)
POSTGRES_RECOVERY = (
    "from Postgres answering again to every result written to Redis until then (during the "
    "outage included) being in Postgres; every later one must land too"
)


def amqp_url() -> str:
    """The RabbitMQ node the RabbitMQ scenario uses."""
    return os.environ.get(AMQP_URL_ENV, DEFAULT_AMQP_URL)


def amqp_reachable(url: str) -> bool:
    """Whether a TCP connection to the RabbitMQ node of ``url`` succeeds."""
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or LOOPBACK, parts.port or AMQP_PORT), PROBE_TIMEOUT_S
        ):
            return True
    except OSError:
        return False


def _under_load(run: ChaosRun, size: Size, workers: int = 2) -> set[int]:
    """Start CPU workers, the backlog and the trickle; wait until jobs run. Returns the pids."""
    procs = [run.cpu_worker(f"cpu-{i}") for i in range(workers)]
    run.fleet.wait_ready()
    run.producer.backlog(size.jobs)
    run.producer.start(size.rate)
    run.running_on(procs[0])
    return {pid for proc in procs for pid in proc.tree()}


def _outage(
    run: ChaosRun, row: Row, pids: set[int], down: Callable[[], None], up: Callable[[], None]
) -> None:
    """Take a service down for ``outage_s``, bring it back, wait for a job to complete."""
    fault_at = now()
    before = run.ledger.executions()
    down()
    try:
        time.sleep(run.size.outage_s)  # the outage itself, not a wait for a result
    finally:
        up()
    back_at = now()
    row.extra["down_s"] = round(back_at - fault_at, 2)
    row.notes.append(f"down {back_at - fault_at:.1f}s")
    done = run.waiter(
        lambda: run.ledger.executions().first_done_after(back_at) is not None,
        run.size.recover_s,
        "a job to complete after the restart",
    )
    executions = run.ledger.executions()
    running = before.running_on(pids) | executions.running_on(pids, before=fault_at)
    row.mid_execution = len(running)
    if done is False:
        row.problems.append(f"no job completed within {run.size.recover_s:.0f}s of the restart")
        return
    row.recover_s = since(fault_at, executions.first_done_after(back_at))


def restart_redis(size: Size, waiter: Waiter = poll) -> Row:
    """Crash Redis (broker, results, log) with jobs queued and running; restart it from AOF."""
    name = "restart-redis"
    row = Row(name, REDIS_RECOVERY)
    with ChaosRun(name, size, waiter) as run:
        pids = _under_load(run, size)
        _outage(run, row, pids, run.redis.kill, run.redis.start)
        return run.count(row)


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(
        [RABBITMQCTL, *args],
        check=True,
        capture_output=True,
        timeout=RABBITMQCTL_TIMEOUT_S,
    )


def _rabbitmq_up() -> None:
    _rabbitmqctl("start_app")
    _rabbitmqctl("await_startup")


def restart_rabbitmq(size: Size, waiter: Waiter = poll) -> Row:
    """Restart the RabbitMQ app under load (publisher confirms on); results in our Redis."""
    name = "restart-rabbitmq"
    row = Row(name, RABBITMQ_RECOVERY)
    if not (amqp_reachable(amqp_url()) and shutil.which(RABBITMQCTL)):
        row.skipped = f"no RabbitMQ at {amqp_url()} with {RABBITMQCTL} on this machine"
        return row
    run = ChaosRun(name, size, waiter, broker_url=amqp_url())
    with run:
        try:
            pids = _under_load(run, size)
            _outage(run, row, pids, lambda: _rabbitmqctl("stop_app"), _rabbitmq_up)
            return run.count(row)
        finally:
            _rabbitmq_up()  # whatever happened, the shared node is left running
            run.fleet.stop()
            delete_queues(run)


def delete_queues(run: ChaosRun) -> None:
    """Delete the run's work and dead-letter queues on RabbitMQ (best effort)."""
    from kombu import Connection

    names = [run.settings.cpu_queue, run.settings.io_queue]
    names += [f"{q}{run.settings.dlq_suffix}" for q in list(names)]
    try:
        with Connection(str(run.settings.broker_url), connect_timeout=5) as conn:
            for queue in names:
                channel = conn.channel()
                try:
                    channel.queue_delete(queue)
                except conn.channel_errors:
                    pass
                finally:
                    channel.close()
    except OSError:
        pass


def postgres_down(size: Size, waiter: Waiter = poll) -> Row:
    """Stop Postgres for ``pg_outage_s`` under load; every result must land there after."""
    name = "postgres-down"
    row = Row(name, POSTGRES_RECOVERY)
    with ChaosRun(name, size, waiter) as run:
        _under_load(run, size, workers=1)
        first = run.producer.ids()[:1]
        waiter(lambda: run.ledger.ok_in_postgres(first), size.recover_s, "the persister")
        run.postgres.stop()
        try:
            time.sleep(size.pg_outage_s)  # the outage itself, under load
        finally:
            run.postgres.start()
        back_at = now()
        written = sorted(run.ledger.ok_in_redis(run.producer.ids()))  # before or during
        done = waiter(
            lambda: set(written) <= run.ledger.ok_in_postgres(written),
            size.recover_s,
            "the results written during the outage to land in Postgres",
        )
        row.recover_s = since(back_at, now()) if done is not False else None
        if done is False:
            row.problems.append(f"outage results not in Postgres {size.recover_s:.0f}s after")
        row.extra["written_before_back"] = len(written)
        run.producer.stop()
        ids = run.producer.ids()
        waiter(lambda: len(run.ledger.ok_in_redis(ids)) == len(ids), size.recover_s, "the jobs")
        waiter(
            lambda: run.ledger.ok_in_redis(ids) <= run.ledger.ok_in_postgres(ids),
            size.recover_s,
            "every result to land in Postgres",
        )
        ok, in_pg = run.ledger.ok_in_redis(ids), run.ledger.ok_in_postgres(ids)
        row.notes.append(
            f"down {size.pg_outage_s:.0f}s; {len(written)} results written before it was back; "
            f"{len(in_pg)}/{len(ok)} results in Postgres"
        )
        if not ok <= in_pg:
            row.problems.append(f"{len(ok - in_pg)} results never reached Postgres")
        return run.count(row)
