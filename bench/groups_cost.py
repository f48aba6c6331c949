"""What worker groups add to ``Client.enqueue``: ``python -m bench.groups_cost [N]``.

Runs against the broker the environment names (``TASKFLEET_BROKER_URL``; use a queue name of
its own, e.g. ``TASKFLEET_CPU_QUEUE=bench-grp-1``: the jobs are left there, unconsumed, and
the caller deletes them). Configurations are interleaved round by round and the median of
``ROUNDS`` is printed, so a shared machine's drift hits them alike; then the routing step
alone (``Client.place``, no Redis).
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

from taskfleet.client import Client
from taskfleet.config.groups import GroupSettings
from taskfleet.handles import JobSpec

ROUNDS = 9
WARM_UP = 200
PLACE_CALLS = 100_000
DEFAULT_N = 2000


def main(n: int) -> None:
    """Print µs per enqueue for each configuration, and per routing step."""
    on = GroupSettings(worker_groups=["eu", "us"])
    configs: dict[str, tuple[GroupSettings, dict[str, Any]]] = {
        "groups off": (GroupSettings(), {}),
        "groups on, least backlog": (on, {}),
        "groups on, group='eu'": (on, {"group": "eu"}),
        "groups on, affinity key": (on, {"affinity": "customer-42"}),
    }
    clients = {label: Client(groups=groups) for label, (groups, _) in configs.items()}
    times: dict[str, list[float]] = {label: [] for label in configs}
    for label, (_, options) in configs.items():
        for _ in range(WARM_UP):
            clients[label].enqueue("cpu.noop", {}, **options)
    for _ in range(ROUNDS):
        for label, (_, options) in configs.items():
            start = time.perf_counter()
            for _ in range(n):
                clients[label].enqueue("cpu.noop", {}, **options)
            times[label].append((time.perf_counter() - start) / n * 1e6)
    for label, values in times.items():
        print(f"enqueue, {label:26s} {statistics.median(values):7.1f} µs ({ROUNDS} x {n})")
    for label, (_, options) in list(configs.items())[1:]:
        jobs = clients[label].prepare([JobSpec("cpu.noop", {})])
        base = list(jobs.queues)
        start = time.perf_counter()
        for _ in range(PLACE_CALLS):
            jobs.queues[:] = base
            clients[label].place(jobs, options.get("group"), options.get("affinity"))
        cost = (time.perf_counter() - start) / PLACE_CALLS * 1e6
        print(f"place() alone, {label:20s} {cost:7.2f} µs")
    for client in clients.values():
        client.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_N)
