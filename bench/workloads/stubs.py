"""W4-W7: placeholders until the features they measure land (each prints a "not yet" row)."""

from __future__ import annotations

from bench.report import Table
from bench.workloads.base import Options

PLANNED = {
    "W4": "contract jobs (validated input/output schemas)",
    "W5": "sandbox jobs (isolated execution)",
    "W6": "result cache (hit/miss throughput and latency)",
    "W7": "autoscaler (reaction time to a load step)",
}


def run(workload: str, options: Options) -> Table:
    """A one-row "not yet" table for a planned workload.

    Args:
        workload: ``W4``..``W7``.
        options: CLI options (unused until implemented).

    Returns:
        The placeholder table.
    """
    del options
    table = Table(workload, PLANNED[workload], ["system", "status"])
    table.rows.append(["all", "not yet: added by a later issue"])
    return table
