"""Result tables: Markdown for people, JSON for tools."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.common import Summary

MIB = 1024 * 1024
NOT_AVAILABLE = "-"


@dataclass
class Table:
    """One workload's results."""

    workload: str
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: list[dict[str, Any]] = field(default_factory=list)

    def markdown(self) -> str:
        """The table in Markdown, with its notes under it."""
        lines = [f"### {self.workload}: {self.title}", ""]
        lines.append("| " + " | ".join(self.headers) + " |")
        lines.append("|" + "|".join("---" for _ in self.headers) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines.append("")
            lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "workload": self.workload,
            "title": self.title,
            "headers": self.headers,
            "rows": self.rows,
            "notes": self.notes,
            "raw": self.raw,
        }


def fmt_rate(summary: Summary | None) -> str:
    """``median (min-max)`` jobs/s, or a dash."""
    if summary is None:
        return NOT_AVAILABLE
    if summary.runs == 1:
        return f"{summary.median:,.0f}"
    return f"{summary.median:,.0f} ({summary.low:,.0f}-{summary.high:,.0f})"


def fmt_ms(summary: Summary | None) -> str:
    """``median (min-max)`` in milliseconds, or a dash."""
    if summary is None:
        return NOT_AVAILABLE
    if summary.runs == 1:
        return f"{summary.median:.1f}"
    return f"{summary.median:.1f} ({summary.low:.1f}-{summary.high:.1f})"


def fmt_mib(summary: Summary | None) -> str:
    """Median MiB, or a dash."""
    if summary is None or summary.median <= 0:
        return NOT_AVAILABLE
    return f"{summary.median / MIB:,.0f}"


def fmt_ratio(ours: float | None, theirs: float | None) -> str:
    """``ours / theirs`` as ``1.23x``, or a dash when either is missing."""
    if not ours or not theirs:
        return NOT_AVAILABLE
    return f"{ours / theirs:.2f}x"
