"""Demo output: live progress bars, the summary tables and the one-line verdict."""

from __future__ import annotations

from rich.progress import Progress, TaskID
from rich.table import Table

from taskfleet.cli.demo_report import DemoReport, percentile
from taskfleet.cli.output import fmt_ms


class DemoProgress:
    """Live bars: published, finished, and copied to Postgres."""

    def __init__(self, progress: Progress, jobs: int) -> None:
        """Add the published and finished bars to ``progress``."""
        self.progress = progress
        self.published = progress.add_task("published", total=jobs, detail="")
        self.finished = progress.add_task("finished", total=jobs, detail="")
        self.persisted: TaskID | None = None

    def __call__(self, report: DemoReport, phase: str) -> None:
        """Update the bars from ``report``; add the Postgres bar once persisting."""
        self.progress.update(self.published, completed=report.sent)
        detail = f"{report.failed} failed ({report.expected_failures} by design)"
        if report.dead_lettered:
            detail += f", {report.dead_lettered} dead-lettered"
        self.progress.update(self.finished, completed=report.done + report.failed, detail=detail)
        if phase == "persisting":
            if self.persisted is None:
                self.persisted = self.progress.add_task(
                    "in Postgres", total=report.pg_expected, detail=""
                )
            self.progress.update(self.persisted, completed=report.pg_rows)


def summary(report: DemoReport) -> Table:
    """The demo's outcome: counts, throughput, latencies, rows in Postgres."""
    table = Table(title="demo summary", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    lost_style = "green" if report.lost == 0 else "bold red"
    pg_style = "green" if report.pg_rows >= report.pg_expected else "bold red"
    failed_style = "green" if report.failed == report.expected_failures else "bold red"
    table.add_row("jobs sent", f"{report.sent:,}")
    table.add_row("done (SUCCESS)", f"{report.done:,}")
    table.add_row(
        "failed (FAILURE)",
        f"[{failed_style}]{report.failed:,}[/] (expected by design: {report.expected_failures})",
    )
    table.add_row("dead-lettered", f"{report.dead_lettered:,}")
    table.add_row("lost", f"[{lost_style}]{report.lost:,}[/]")
    if report.unfinished:
        table.add_row("no result by the deadline", f"[bold red]{report.unfinished:,}[/]")
    table.add_row("throughput", f"{report.throughput:,.0f} jobs/s")
    table.add_row("wall (first publish -> last result)", f"{report.wall_s:.2f} s")
    table.add_row("publishing", f"{report.publish_s:.2f} s")
    table.add_row("latency p50 (publish -> result)", fmt_ms(report.p50_ms))
    table.add_row("latency p99 (publish -> result)", fmt_ms(report.p99_ms))
    table.add_row(
        "rows in Postgres taskfleet_results",
        f"[{pg_style}]{report.pg_rows:,}[/] / {report.pg_expected:,}",
    )
    return table


def priority_table(report: DemoReport) -> Table:
    """Latency percentiles per priority level."""
    table = Table(title="latency by priority", title_justify="left")
    for column in ("priority", "jobs", "p50", "p99"):
        table.add_column(column, justify="left" if column == "priority" else "right")
    for name in ("critical", "high", "normal", "low"):
        values = report.latency_by_priority.get(name, [])
        table.add_row(
            name, str(len(values)), fmt_ms(percentile(values, 50)), fmt_ms(percentile(values, 99))
        )
    return table


def verdict(report: DemoReport) -> str:
    """One greppable line: ``demo: OK ...`` or ``demo: FAILED (reasons) ...``."""
    reasons = []
    if report.lost:
        reasons.append(f"{report.lost} lost")
    if report.failed != report.expected_failures or report.unexpected_failures:
        reasons.append(
            f"{report.failed} failed, {report.expected_failures} expected "
            f"({report.unexpected_failures} valid jobs failed)"
        )
    if report.pg_rows < report.pg_expected:
        reasons.append(f"{report.pg_expected - report.pg_rows} results missing in Postgres")
    head = "demo: OK" if report.ok else f"demo: FAILED ({'; '.join(reasons)})"
    return (
        f"{head} sent={report.sent} done={report.done} failed={report.failed} "
        f"expected_failures={report.expected_failures} dead_lettered={report.dead_lettered} "
        f"lost={report.lost} pg_rows={report.pg_rows}/{report.pg_expected} "
        f"throughput={report.throughput:.0f}/s wall_s={report.wall_s:.2f} "
        f"p50_ms={report.p50_ms:.1f} p99_ms={report.p99_ms:.1f}"
    )
