"""The chaos harness's scenarios (``bench/chaos``), smaller, as tests.

Each runs the very scenario function ``python -m bench.chaos`` runs, on its own Redis and
its own database (on one Postgres the module starts for them all: ``shared_postgres``), and
asserts what the harness reports: nothing lost, no execution twice beyond the
jobs the fault cut short, no dead letter, and, for the kill scenarios, the killed worker's
jobs done within ``SIZE.recover_s`` of the kill (45 s, far below the hour a stranded job
waits; the 15 s target is the harness's to measure): a ``wait_for`` deadline inside the
scenario, which fails the test with what it waited for.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from bench.chaos.report import Row
from bench.chaos.run import SIZES
from bench.chaos.scenarios import SCENARIOS
from bench.chaos.scenarios_services import amqp_reachable, amqp_url
from bench.chaos.servers import shared_postgres
from tests.support.services import in_ci, missing_service
from tests.support.waiting import wait_for

SIZE = SIZES["test"]
RABBITMQ = "restart-rabbitmq"
#: Restarting RabbitMQ bounces every client of the node: only where it is ours to restart.
RABBITMQ_RESTART_ENV = "TASKFLEET_CHAOS_RESTART_RABBITMQ"
SCENARIO_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def one_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One Postgres for the module's scenarios (each still gets a database of its own)."""
    with shared_postgres(tmp_path_factory.mktemp("chaos-pg")):
        yield


def assert_clean(row: Row) -> None:
    """The harness's pass criteria, one assertion each so a failure names the figure."""
    figures = dict(zip(("sent", "ok", "lost", "duplicated", "dead"), row.cells()[1:6], strict=True))
    assert row.sent > 0, figures
    assert row.dead_lettered == 0, figures
    assert row.lost == 0, f"{row.lost} lost: {row.notes} {figures}"
    assert row.duplicated <= row.mid_execution, (
        f"{row.duplicated} executions beyond the first, {row.mid_execution} jobs mid-execution"
    )
    assert not row.problems, row.outcome


#: Scenarios whose recovery deadline only taskfleet's transport meets: owner-tagged deliveries
#: of a dead or cut-off worker restored within seconds, and deliveries a channel could not
#: restore while Redis was down restored by the next one (``routing/deferred_restore.py``).
#: On stock kombu (``TASKFLEET_FAST_TRANSPORT=false``) both wait for the visibility timeout.
FAST_RECOVERY = {
    "kill-prefork-worker": "a killed worker's jobs restored by its owner tags",
    "kill-gevent-worker": "a killed worker's jobs restored by its owner tags",
    "kill-solo-worker": "a killed worker's jobs restored by its owner tags",
    "network-partition": "a cut-off worker's jobs handed over by its owner tags",
    "restart-redis": "held deliveries restored by the next channel after Redis restarts",
}


def _scenario_param(name: str) -> Any:
    reason = FAST_RECOVERY.get(name)
    marks = [] if reason is None else [pytest.mark.fast_transport(reason=reason)]
    return pytest.param(name, marks=marks, id=name)


@pytest.mark.usefixtures("one_postgres")
@pytest.mark.timeout(SCENARIO_TIMEOUT_S)
@pytest.mark.parametrize(
    "scenario", [_scenario_param(name) for name in SCENARIOS if name != RABBITMQ]
)
def test_scenario(scenario: str) -> None:
    row = SCENARIOS[scenario](SIZE, wait_for)
    if row.skipped:  # the partition needs root and `ip netns`
        missing_service(f"what {scenario} needs", row.skipped)
    assert_clean(row)


@pytest.mark.rabbitmq
@pytest.mark.disruptive
@pytest.mark.timeout(SCENARIO_TIMEOUT_S)
def test_rabbitmq_restart() -> None:
    url = amqp_url()
    if not amqp_reachable(url):
        missing_service(f"RabbitMQ at {url}")
    if not (in_ci() or os.environ.get(RABBITMQ_RESTART_ENV)):
        missing_service("a RabbitMQ node this test may restart", f"{RABBITMQ_RESTART_ENV} unset")
    assert_clean(SCENARIOS[RABBITMQ](SIZE, wait_for))
