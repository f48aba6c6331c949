"""The chaos harness's scenarios (``bench/chaos``), smaller, as tests.

Each runs the very scenario function ``python -m bench.chaos`` runs, on its own Redis and
its own database (on one Postgres the module starts for them all: ``shared_postgres``), and
asserts what the harness reports: nothing lost, no execution twice beyond the
jobs the fault cut short, no dead letter, and, for the kill scenarios, the killed worker's
jobs done within ``SIZE.recover_s`` of the kill (45 s, far below the hour a stranded job
waits; the 15 s target is the harness's to measure): a ``wait_for`` deadline inside the
scenario, which fails the test with what it waited for.

Three gaps are still open (issue 16, RELIABILITY.md "Open"): where one shows, the test is
reported as an expected failure naming it; every other figure is still asserted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

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


#: Known open gaps: scenario -> (the figure it can miss, why). Seen in a few runs in ten.
KNOWN_GAPS: dict[str, tuple[str, str]] = {
    "kill-gevent-worker": (
        "lost",
        "a job popped by BRPOP whose unacked record had not been written when the worker "
        "died exists nowhere (kombu's Redis transport pops, then records)",
    ),
    "restart-redis": (
        "lost",
        "now and then one delivery stays in `unacked` after Redis restarts (cause not found)",
    ),
    "network-partition": (
        "duplicated",
        "a partitioned worker starts its prefetched job after the link returns, although the "
        "reclaimer gave that delivery to another worker",
    ),
}


@pytest.fixture(scope="module")
def one_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One Postgres for the module's scenarios (each still gets a database of its own)."""
    with shared_postgres(tmp_path_factory.mktemp("chaos-pg")):
        yield


def assert_clean(row: Row, scenario: str = "") -> None:
    """The harness's pass criteria, one assertion each so a failure names the figure."""
    figures = dict(zip(("sent", "ok", "lost", "duplicated", "dead"), row.cells()[1:6], strict=True))
    assert row.sent > 0, figures
    assert row.dead_lettered == 0, figures
    missed = []
    if row.lost:
        missed.append(("lost", f"{row.lost} lost: {row.notes} {figures}"))
    if row.duplicated > row.mid_execution:
        missed.append(
            (
                "duplicated",
                f"{row.duplicated} executions beyond the first, "
                f"{row.mid_execution} jobs mid-execution",
            )
        )
    gap = KNOWN_GAPS.get(scenario)
    for figure, message in missed:
        if gap is None or gap[0] != figure:
            raise AssertionError(message)
    problems = [p for p in row.problems if not (gap and missed and gap[0] in p)]
    if missed:  # only the scenario's known gap showed
        pytest.xfail(f"known gap ({gap[1] if gap else ''}): {missed[0][1]}")
    assert not problems, row.outcome


@pytest.mark.usefixtures("one_postgres")
@pytest.mark.timeout(SCENARIO_TIMEOUT_S)
@pytest.mark.parametrize("scenario", [name for name in SCENARIOS if name != RABBITMQ])
def test_scenario(scenario: str) -> None:
    row = SCENARIOS[scenario](SIZE, wait_for)
    if row.skipped:  # the partition needs root and `ip netns`
        missing_service(f"what {scenario} needs", row.skipped)
    assert_clean(row, scenario)


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
