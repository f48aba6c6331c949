"""W8's Markdown: per-process USS at every mark, growth after the first, and the final checks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bench.soak.memory import POOL_SUFFIX, ProcessMemory
from bench.soak.run import SoakResult, cpu_unit_role

MIB = 2**20
GROWTH_TARGET = 0.05
#: The issue's sustained rate for projecting Redis memory.
PROJECTED_RATE = 1_000


def _mib(value: float) -> str:
    return f"{value / MIB:,.1f}"


def _jobs(n: int) -> str:
    return f"{n // 1000:,}k" if n % 1000 == 0 else f"{n:,}"


def growth(result: SoakResult, field: str = "uss") -> dict[int, float]:
    """Each process present at the first mark: its largest later size over its first, minus 1.

    A process is followed by its pid (and role, should the pid be reused). One that exits
    (a pool process or a solo worker the autoscaler retired) counts over the marks it was
    seen at; one gone before the second mark has no growth at all.

    Args:
        result: The soak.
        field: ``uss`` or ``rss``.
    """
    first = {p.pid: (p.role, getattr(p, field)) for p in result.marks[0].processes}
    out: dict[int, float] = {}
    for mark in result.marks[1:]:
        for p in mark.processes:
            role, size = first.get(p.pid, (None, 0))
            if size and role == p.role:
                out[p.pid] = max(out.get(p.pid, -1.0), getattr(p, field) / size - 1)
    return out


def leak_growth(result: SoakResult) -> dict[int, float]:
    """Per process, the smaller of its USS and RSS growth after the first mark.

    Memory a process allocates shows in both. USS alone also moves when sharing changes: a
    prefork child's USS rises when a sibling that shared its pages exits, or when the parent
    rewrites a page they shared (the child's copy becomes its own), with no new memory used;
    RSS alone rises when a process reads more of what it shares. So a process grows only if
    both do.
    """
    uss, rss = growth(result, "uss"), growth(result, "rss")
    return {pid: min(uss[pid], rss[pid]) for pid in uss if pid in rss}


def _rows(result: SoakResult) -> Iterable[tuple[str, int]]:
    """(role, pid) of every process seen at any mark, in first-seen order (a reused pid with
    another role is another process)."""
    seen: dict[tuple[int, str], None] = {}
    for mark in result.marks:
        for p in mark.processes:
            seen.setdefault((p.pid, p.role), None)
    return ((role, pid) for pid, role in seen)


def process_table(result: SoakResult) -> str:
    """One row per process: USS (MiB) at every mark, and its USS and RSS growth after the first."""
    by_mark = [{(p.pid, p.role): p for p in m.processes} for m in result.marks]
    uss, rss = growth(result, "uss"), growth(result, "rss")
    first, last = by_mark[0], by_mark[-1]
    head = ["process", *(_jobs(m.jobs) for m in result.marks), "growth after first: USS / RSS"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for role, pid in _rows(result):
        key = (pid, role)
        cells = [_mib(m[key].uss) if key in m else "" for m in by_mark]
        if key in first and pid in uss:
            change = f"{uss[pid]:+.1%} / {rss[pid]:+.1%}"
            if key not in last:  # exited (a solo worker retired by the autoscaler, say)
                seen = [
                    m.jobs for m, procs in zip(result.marks, by_mark, strict=True) if key in procs
                ]
                change += f", gone after {_jobs(seen[-1])}"
        else:
            born = "forked later" if role.endswith(POOL_SUFFIX) else "started later"
            change = born if key not in first else "exited"
            change += "" if key in first or key not in last else " (still running)"
        lines.append(f"| {role} (pid {pid}) | " + " | ".join(cells) + f" | {change} |")
    fleet = [_mib(sum(p.uss for p in m.processes)) for m in result.marks]
    lines.append("| **all processes** | " + " | ".join(fleet) + " | |")
    redis_row = [_mib(m.redis_used) for m in result.marks]
    lines.append("| Redis used_memory | " + " | ".join(redis_row) + " | |")
    return "\n".join(lines)


def _sizes(processes: list[ProcessMemory]) -> str:
    uss = ", ".join(_mib(p.uss) for p in processes)
    rss = ", ".join(_mib(p.rss) for p in processes)
    return f"{uss} MiB USS ({rss} MiB RSS)"


def _started_later(result: SoakResult) -> str:
    """The CPU processes the autoscaler added between the first and the last mark."""
    if not result.marks:
        return ""
    pool, role = cpu_unit_role(result.marks[0].processes)
    first_seen: dict[int, tuple[int, ProcessMemory]] = {}
    for mark in result.marks[1:]:
        for p in mark.processes:
            if p.role == role:
                first_seen.setdefault(p.pid, (mark.jobs, p))
    early = [p for p in result.marks[0].processes if p.role == role]
    later = [
        (jobs, p) for pid, (jobs, p) in first_seen.items() if pid not in {e.pid for e in early}
    ]
    if not later:
        return ""
    what = "Solo CPU workers started" if pool == "solo" else "CPU pool processes forked"
    sizes = ", ".join(f"{_mib(p.uss)} / {_mib(p.rss)} (at {_jobs(jobs)})" for jobs, p in later)
    return (
        f"- {what} after the first mark, USS / RSS MiB at their first mark: {sizes}; "
        f"those of start-up at the first mark: {_sizes(early)}.\n"
    )


def _late(late: dict[str, Any]) -> str:
    if not late:
        return ""
    solo = late.get("pool") == "solo"
    forked = [ProcessMemory(**p) for p in late["late"]]
    early = [ProcessMemory(**p) for p in late["early_at_first_mark"]]
    settled = [ProcessMemory(**p) for p in late["early_at_last_sight"]]
    if not solo:
        if not forked:
            return (
                "- Late fork: the autoscaler did not fork a new CPU pool process for the batch.\n"
            )
        return (
            f"- Late fork: the autoscaler shrank the CPU pool to one process "
            f"{late['shrunk_after_s']:.0f} s after the last mark, and forked {len(forked)} new "
            f"process(es) for {late['jobs']:,} more jobs: {_sizes(forked)} after them. The pool "
            f"processes forked at start-up: {_sizes(early)} at the first mark, {_sizes(settled)} "
            "when last sampled.\n"
        )
    shrunk = (
        f"- Late start: the autoscaler shrank the CPU pool to one solo worker "
        f"{late['shrunk_after_s']:.0f} s after the last mark"
    )
    ready = late.get("jobs_before_ready")
    if not forked:
        return (
            f"{shrunk}; the supervisor started no new solo worker for {late['jobs']:,} more "
            f"jobs (the one left ran them in {late.get('probe_s', 0):.0f} s).\n"
        )
    ages = [a for a in late.get("late_started_after_s", []) if a is not None]
    when = (
        " (started " + ", ".join(f"{a:.0f}" for a in ages) + " s after the jobs were fed)"
        if ages
        else ""
    )
    fed = f"{late['jobs']:,} more jobs"
    if ready is not None:
        fed += f" ({ready:,} fed before it was up, {late['jobs'] - ready:,} after)"
    return (
        f"{shrunk}, and the supervisor started {len(forked)} new solo worker(s){when} for "
        f"{fed}: {_sizes(forked)} once they were done "
        f"({late.get('probe_s', 0):.0f} s after the feed began). The solo workers started "
        f"at start-up: {_sizes(early)} at the first mark, {_sizes(settled)} when last sampled.\n"
    )


def system_section(result: SoakResult, result_ttl_s: int | None) -> str:
    """The section of one system: its table and its final checks."""
    final = result.final
    uss, grew = growth(result), leak_growth(result)
    worst = max(grew.values(), default=0.0)
    verdict = "within" if worst <= GROWTH_TARGET else "**over**"
    roles = {p.pid: p.role for m in result.marks for p in m.processes}
    top_uss = max(uss, key=lambda pid: uss[pid]) if uss else None
    text = [
        f"### {result.label}\n",
        process_table(result),
        "",
        f"- {final['jobs_per_s']:,.0f} jobs/s over the soak. Largest growth of a process after "
        f"the first mark, in both USS and RSS: {worst:+.1%} ({verdict} the "
        f"{GROWTH_TARGET:.0%} target)."
        + (
            f" Largest in USS alone: {roles[top_uss]} (pid {top_uss}), {uss[top_uss]:+.1%}."
            if top_uss is not None
            else ""
        ),
        f"- Redis at the end: {_mib(final['redis_used_bytes'])} MiB used, "
        f"{final['result_keys']:,} result keys",
    ]
    per_result = final.get("bytes_per_result")
    if per_result:
        text[-1] += f", {per_result:,.0f} bytes per result (used_memory growth over result keys)."
        if result_ttl_s:
            projected = per_result * PROJECTED_RATE * result_ttl_s
            text.append(
                f"- Projected Redis for results at {PROJECTED_RATE:,} jobs/s sustained with the "
                f"{result_ttl_s:,} s result TTL: {projected / 2**30:,.2f} GiB."
            )
    if "durable_rows" in final:
        got, asked = final["read_back_from_durable"]
        text.append(
            f"- Postgres holds {final['durable_rows']:,} results (every job of the run, "
            f"warm-up included); {got:,} of {asked:,} random results read back through the "
            "client after their Redis copy was deleted (so from Postgres)."
        )
    got, asked = final["read_back"]
    text.append(f"- {got:,} of {asked:,} other random results read back through the client.")
    return "\n".join(text) + "\n" + _started_later(result) + _late(result.late_fork)
