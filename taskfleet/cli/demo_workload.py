"""The demo's workload: a shuffled, prioritised mix of the built-in job kinds.

About 55% ``cpu.checksum``, 40% ``io.wait``, 1.5% checksums that fail by design
(``rounds: 0``) and no-ops for the rest, spread over the four priority levels.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from taskfleet.client import JobSpec

CHECKSUM_SHARE = 0.55
WAIT_SHARE = 0.40
INVALID_SHARE = 0.015
"""Share of ``cpu.checksum`` jobs with ``rounds: 0``, which fail by design."""

CHECKSUM_ROUNDS = (1, 50)
WAIT_MS = (1, 20)
PRIORITY_WEIGHTS: dict[str, float] = {"low": 0.25, "normal": 0.40, "high": 0.25, "critical": 0.10}


@dataclass(frozen=True)
class PlannedJob:
    """One job of the demo workload.

    Attributes:
        spec: What is sent.
        priority: Its level name.
        expect_failure: True for the jobs that are invalid by design.
    """

    spec: JobSpec
    priority: str
    expect_failure: bool = False


def plan_workload(jobs: int, rng: random.Random) -> list[PlannedJob]:
    """A shuffled mix: ~55% checksums, ~40% waits, ~1.5% invalid, the rest no-ops.

    Args:
        jobs: How many jobs.
        rng: Source of randomness (seed it for a repeatable run).

    Returns:
        ``jobs`` planned jobs with priorities spread over low/normal/high/critical.
    """
    invalid = round(jobs * INVALID_SHARE)
    checksums = min(round(jobs * CHECKSUM_SHARE), jobs - invalid)
    waits = min(round(jobs * WAIT_SHARE), jobs - invalid - checksums)
    noops = jobs - invalid - checksums - waits
    levels = list(PRIORITY_WEIGHTS)
    weights = list(PRIORITY_WEIGHTS.values())

    def level() -> str:
        return rng.choices(levels, weights)[0]

    plan: list[PlannedJob] = []
    for _ in range(checksums):
        rounds = rng.randint(*CHECKSUM_ROUNDS)
        prio = level()
        plan.append(PlannedJob(JobSpec("cpu.checksum", {"rounds": rounds}, prio), prio))
    for _ in range(waits):
        ms = rng.randint(*WAIT_MS)
        prio = level()
        plan.append(PlannedJob(JobSpec("io.wait", {"ms": ms}, prio), prio))
    for i in range(noops):
        prio = level()
        kind = "cpu.noop" if i % 2 == 0 else "io.noop"
        plan.append(PlannedJob(JobSpec(kind, None, prio), prio))
    for _ in range(invalid):
        prio = level()
        plan.append(PlannedJob(JobSpec("cpu.checksum", {"rounds": 0}, prio), prio, True))
    rng.shuffle(plan)
    return plan
