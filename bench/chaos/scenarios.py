"""Every chaos scenario by name, in the order the harness runs them."""

from __future__ import annotations

from collections.abc import Callable

from bench.chaos.report import Row
from bench.chaos.run import Size, Waiter
from bench.chaos.scenario_beat import two_beats
from bench.chaos.scenario_partition import partition_worker
from bench.chaos.scenarios_services import postgres_down, restart_rabbitmq, restart_redis
from bench.chaos.scenarios_workers import (
    kill_cpu_main,
    kill_io_worker,
    kill_pool_process,
    kill_solo_worker,
    term_worker,
)

Scenario = Callable[[Size, Waiter], Row]

SCENARIOS: dict[str, Scenario] = {
    "kill-prefork-worker": kill_cpu_main,
    "kill-gevent-worker": kill_io_worker,
    "kill-pool-process": kill_pool_process,
    "kill-solo-worker": kill_solo_worker,
    "restart-redis": restart_redis,
    "restart-rabbitmq": restart_rabbitmq,
    "postgres-down": postgres_down,
    "two-beats": two_beats,
    "sigterm-warm-shutdown": term_worker,
    "network-partition": partition_worker,
}
