"""One row per scenario; the Markdown table and the JSON file they make."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"
LATEST_MD = "chaos-latest.md"
LATEST_JSON = "chaos-latest.json"
HEADERS = (
    "scenario",
    "sent",
    "ok",
    "lost",
    "duplicated",
    "dead-lettered",
    "recover (s)",
    "outcome",
    "notes",
)
NOT_AVAILABLE = "-"
PASS = "pass"


@dataclass
class Row:
    """What one scenario measured.

    Attributes:
        scenario: Its name (``--only`` takes it).
        recovery: What "time to recover" means in this scenario.
        sent: Ids enqueued (the broker accepted them).
        ok: Ids with a SUCCESS result.
        lost: ``sent - ok - dead_lettered`` once settled (or at the deadline).
        duplicated: Executions beyond the first, summed over ids.
        dead_lettered: Ids in the dead-letter queues.
        recover_s: Seconds from the fault to recovery, None if it did not recover in time.
        mid_execution: Jobs running where the fault hit (duplicates allowed up to this).
        problems: Why the outcome is not a pass (empty: pass).
        notes: Scenario-specific figures.
        extra: Raw figures for the JSON file.
        skipped: Why the scenario did not run, if it did not.
    """

    scenario: str
    recovery: str
    sent: int = 0
    ok: int = 0
    lost: int = 0
    duplicated: int = 0
    dead_lettered: int = 0
    recover_s: float | None = None
    mid_execution: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None

    @property
    def outcome(self) -> str:
        """``pass``, ``skipped (<why>)``, or ``FAIL: <problems>``."""
        if self.skipped:
            return f"skipped ({self.skipped})"
        return PASS if not self.problems else "FAIL: " + "; ".join(self.problems)

    @property
    def failed(self) -> bool:
        """Whether it ran and found a problem."""
        return bool(self.problems) and not self.skipped

    def cells(self) -> list[str]:
        """The Markdown row."""
        recover = NOT_AVAILABLE if self.recover_s is None else f"{self.recover_s:.2f}"
        counts = (self.sent, self.ok, self.lost, self.duplicated, self.dead_lettered)
        return [
            self.scenario,
            *(f"{n:,}" for n in counts),
            recover,
            self.outcome,
            "; ".join(self.notes),
        ]

    def as_dict(self) -> dict[str, Any]:
        """JSON form (with the outcome)."""
        return asdict(self) | {"outcome": self.outcome}


def markdown(rows: list[Row], header: str) -> str:
    """The table, then each scenario's definition of "time to recover"."""
    lines = [header, "", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row.cells()) + " |" for row in rows]
    lines += ["", "Time to recover, per scenario:", ""]
    lines += [f"- `{row.scenario}`: {row.recovery}" for row in rows]
    return "\n".join(lines) + "\n"


def write(
    rows: list[Row], header: str, meta: dict[str, Any], directory: Path = RESULTS_DIR
) -> None:
    """Write ``chaos-latest.md`` and ``chaos-latest.json`` under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / LATEST_MD).write_text(markdown(rows, header))
    payload = meta | {"rows": [row.as_dict() for row in rows]}
    (directory / LATEST_JSON).write_text(json.dumps(payload, indent=2) + "\n")
