"""A worker's heartbeat: a sidecar process that vouches for it and reclaims the dead.

A worker claims an *owner* id at start (``taskfleet.routing.owners``); its deliveries are
recorded under that id. Its sidecar (``taskfleet.sidecar``), a child process started here
before the consumer starts, keeps the owner's ``alive`` key fresh (every
``TASKFLEET_RESILIENCE_HEARTBEAT_INTERVAL``, TTL ``..._HEARTBEAT_TTL``) for as long as the
worker process lives, and looks for dead consumers at start and every
``..._RECLAIM_INTERVAL`` (jittered), for the whole fleet. When the worker process dies,
however it dies (SIGKILL, ``SIGXCPU`` from a solo worker's CPU backstop, a crash), the
sidecar sees it at once (a pidfd) and has its deliveries restored; if the sidecar dies with
it, the key expires and another worker's sidecar restores them within the TTL plus a pass.

A process, not a thread: a solo worker runs jobs on its main thread, and a job in C code
holds the GIL for as long as it runs (measured here: a thread beating every 0.5 s fell
silent for 3.6 s while ``sum(range(3 * 10**8))`` ran for 3.4 s), so a thread would make a
busy worker look dead and have its job run twice; in a prefork parent a busy thread costs throughput (the
result persister is a process for the same reason). The sidecar imports only the standard
library (a few MiB, not the ~50 of redis-py and kombu); it ignores SIGINT, SIGTERM and
SIGHUP, since a worker in a warm shutdown still runs jobs, and leaves with the worker.
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from taskfleet.config.app_settings import settings_of
from taskfleet.routing import owners
from taskfleet.routing.depth import redis_priority_keys
from taskfleet.routing.reclaim import FORGET_AFTER_S, RESTART_GRACE_TTLS, STATS_PREFIX
from taskfleet.routing.topology import Pool, Topology
from taskfleet.sidecar import CONFIG_ENV, READY_LINE
from taskfleet.workers.spawn import start_process

log = logging.getLogger(__name__)

#: Longest a worker waits for its sidecar's first heartbeat before going on without one.
START_TIMEOUT_S = 30.0
#: Replaced by each owner's id in the key templates the sidecar gets.
OWNER_SLOT = "{owner}"


def sidecar_config(
    app: Any,
    owner: str,
    interval: float,
    ttl: float,
    reclaim: float,
    queues: Sequence[str] = (),
) -> dict[str, Any]:
    """What the sidecar needs (passed in its environment: argv would show every user the
    broker's password); ``queues``: those the worker consumes, recorded with each beat."""
    options = dict(app.conf.broker_transport_options or {})
    unacked = str(options.get("unacked_key", "unacked"))
    return {
        "owner": owner,
        "parent": os.getpid(),
        "broker_url": str(app.conf.broker_url),
        "transport_options": options,
        "interval": interval,
        "ttl": ttl,
        "reclaim_interval": reclaim,
        "forget_after": FORGET_AFTER_S,
        "restart_grace": RESTART_GRACE_TTLS * ttl,
        "registry_key": owners.registry_key(unacked),
        "alive_key": owners.alive_key(OWNER_SLOT),
        "tags_key": owners.tags_key(OWNER_SLOT),
        "stats_key": STATS_PREFIX + unacked,
        "lock_key": f"{STATS_PREFIX}{unacked}:lock",
        "consumer_keys": [owners.consumers_key(queue) for queue in queues],
        "group_pools": group_pools(Topology.from_settings(settings_of(app))),
    }


def group_pools(topology: Topology) -> list[list[dict[str, Any]]]:
    """Per pool, its group queues' consumers key and sub-lists (what the sidecar sweeps)."""
    if not topology.groups:
        return []
    pools: tuple[Pool, ...] = ("cpu", "io")
    return [
        [
            {"consumers": owners.consumers_key(q), "lists": redis_priority_keys(q)}
            for q in topology.group_queues(pool)
        ]
        for pool in pools
    ]


def start_sidecar(
    app: Any,
    interval: float,
    ttl: float,
    reclaim_interval: float,
    queues: Sequence[str] = (),
) -> Any:
    """In a worker's main process: start its sidecar and claim an owner once it beats
    (``queues``: those the worker consumes, so producers see them served).

    Returns:
        The sidecar's ``Popen``, or None if it did not come up (the worker then keeps stock
        bookkeeping: should it die, its jobs are restored after the visibility timeout).
    """
    owner = owners.new_owner_id()
    config = sidecar_config(app, owner, interval, ttl, reclaim_interval, queues)
    proc = start_process(
        [sys.executable, "-m", "taskfleet.sidecar"],
        env={**os.environ, CONFIG_ENV: json.dumps(config)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_S)
    if not ready or proc.stdout.readline() != READY_LINE:
        proc.kill()
        proc.wait()
        log.error(
            "taskfleet: heartbeat sidecar did not start: should this worker die, its jobs "
            "are restored only after the visibility timeout"
        )
        return None
    proc.stdout.close()
    owners.claim(owner)
    log.info("taskfleet: heartbeat sidecar (pid %s) for consumer %s", proc.pid, owner)
    return proc
