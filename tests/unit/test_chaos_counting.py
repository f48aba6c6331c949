"""The chaos harness's counting, on hand-made execution logs (no services)."""

from __future__ import annotations

import json

from bench.chaos.ledger import Executions
from bench.chaos.report import Row
from bench.chaos.scenario_beat import double_decisions

VICTIM, SURVIVOR = 101, 202


def _log(*entries: tuple[str, int, str, float]) -> Executions:
    return Executions.parse(
        json.dumps({"id": i, "pid": pid, "phase": phase, "at": at}).encode()
        for i, pid, phase, at in entries
    )


def test_a_job_cut_short_and_run_again_is_one_duplicate_and_was_mid_execution() -> None:
    log = _log(
        ("a", VICTIM, "start", 1.0),
        ("b", VICTIM, "start", 1.0),
        ("b", VICTIM, "done", 1.5),
        ("a", SURVIVOR, "start", 9.0),
        ("a", SURVIVOR, "done", 9.3),
    )
    assert log.duplicated(["a", "b"]) == 1
    assert log.running_on({VICTIM}, before=2.0) == {"a"}
    assert log.running_on({VICTIM}) == set()  # its last start is the survivor's
    assert log.first_done_after(2.0, {"a"}) == 9.3
    assert log.first_done_after(2.0, {"a"}, elsewhere_than={SURVIVOR}) is None


def test_a_job_started_after_the_fault_was_not_mid_execution() -> None:
    log = _log(("a", VICTIM, "start", 5.0))
    assert log.running_on({VICTIM}, before=2.0) == set()
    assert log.unfinished_pids() == {VICTIM}


def test_two_decisions_inside_the_gate_window_count_as_one_tick_decided_twice() -> None:
    assert double_decisions([0.0, 2.0, 4.0, 6.1], interval=2.0) == 0
    assert double_decisions([0.0, 0.3, 2.0, 2.1], interval=2.0) == 2


def test_a_row_fails_with_its_problems_and_a_skipped_row_does_not() -> None:
    row = Row("s", "def", problems=["3 lost"])
    assert row.failed
    assert row.outcome == "FAIL: 3 lost"
    skipped = Row("s", "def", skipped="needs root")
    assert not skipped.failed
    assert skipped.outcome == "skipped (needs root)"
