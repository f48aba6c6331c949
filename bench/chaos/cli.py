"""``python -m bench.chaos``: run the chaos scenarios, print one Markdown table, write results."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from datetime import UTC, datetime

from bench.chaos.report import Row, markdown, write
from bench.chaos.run import SIZES, poll
from bench.chaos.scenarios import SCENARIOS

GIT_TIMEOUT_S = 10.0


def _names(value: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown scenario: {', '.join(unknown)} (known: {', '.join(SCENARIOS)})"
        )
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        The namespace.
    """
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--only", type=_names, default=tuple(SCENARIOS), help="scenarios, e.g. "
                        "kill-pool-process,two-beats (default: all)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="smaller and shorter (< 3 min)")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results")
    parser.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    return parser.parse_args(argv)


def code_version() -> str:
    """``git rev-parse --short HEAD``, plus a note when the tree has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True, timeout=GIT_TIMEOUT_S,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True, timeout=GIT_TIMEOUT_S,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head} with uncommitted work in progress" if dirty else head


def run_one(name: str, size_name: str) -> Row:
    """Run one scenario; an error becomes a failed row instead of stopping the harness."""
    try:
        return SCENARIOS[name](SIZES[size_name], poll)
    except Exception as exc:
        logging.getLogger(__name__).exception("scenario %s failed", name)
        return Row(name, "-", problems=[f"error: {type(exc).__name__}: {exc}"])


def main(argv: list[str] | None = None) -> int:
    """Run the selected scenarios and report.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        0 when every scenario that ran passed, else 1.
    """
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    size_name = "quick" if args.quick else "full"
    started = time.monotonic()
    began = datetime.now(UTC)
    rows: list[Row] = []
    timings: dict[str, float] = {}
    for name in args.only:
        t0 = time.monotonic()
        logging.getLogger(__name__).info("scenario %s", name)
        rows.append(run_one(name, size_name))
        timings[name] = round(time.monotonic() - t0, 1)
        print("| " + " | ".join(rows[-1].cells()) + " |", file=sys.stderr, flush=True)
    elapsed = time.monotonic() - started
    command = "python -m bench.chaos " + " ".join(argv if argv is not None else sys.argv[1:])
    header = (
        f"## taskfleet chaos harness ({began:%Y-%m-%d %H:%M} UTC)\n\n"
        f"Command: `{command.strip()}`; code: {code_version()}; size: {size_name} "
        f"({SIZES[size_name]}); total time {elapsed:,.0f} s "
        f"({', '.join(f'{n} {s:,.0f} s' for n, s in timings.items())}).\n"
    )
    print(markdown(rows, header), flush=True)
    if not args.no_write:
        meta = {
            "generated_utc": began.isoformat(),
            "command": command.strip(),
            "code": code_version(),
            "size": size_name,
            "elapsed_s": round(elapsed, 1),
            "scenario_s": timings,
        }
        write(rows, header, meta)
    return 1 if any(row.failed for row in rows) else 0
