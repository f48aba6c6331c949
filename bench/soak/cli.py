"""``python -m bench.soak``: W8, a million jobs through taskfleet and stock Celery, side by side.

Each system runs on one private ``redis-server`` (no persistence, flushed between systems) and
the bench's PostgreSQL. Every process's USS is sampled every ``--every`` jobs; the tables go to
stdout and ``bench/results/soak-latest.md`` (raw figures in ``soak-latest.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from bench.chaos.cli import code_version
from bench.chaos.servers import RedisProcess
from bench.services import stop_started
from bench.soak.memory import ProcessMemory
from bench.soak.report import system_section
from bench.soak.run import DEFAULT_BATCH, Mark, SoakResult, soak
from bench.soak.systems import CelerySoak, SoakSystem, TaskfleetSoak

SYSTEMS: dict[str, type[SoakSystem]] = {"taskfleet": TaskfleetSoak, "celery_redis": CelerySoak}
DEFAULT_JOBS = 1_000_000
DEFAULT_EVERY = 100_000
QUICK_JOBS = 50_000
QUICK_EVERY = 10_000
RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"
LATEST = "soak-latest"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        The namespace.
    """
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--jobs", type=int, help=f"jobs per system (default {DEFAULT_JOBS:,})")
    parser.add_argument("--every", type=int, help=f"jobs between marks ({DEFAULT_EVERY:,})")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="jobs per publish")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"any of {', '.join(SYSTEMS)}")
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_JOBS:,} jobs, marks every {QUICK_EVERY:,}"
    )
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results")
    parser.add_argument("--from-json", type=Path, help="only print the report of a saved soak")
    parser.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    return parser.parse_args(argv)


def _one(name: str, redis_url: str, workdir: Path, args: argparse.Namespace) -> SoakResult:
    system = SYSTEMS[name](redis_url, workdir)
    system.redis.flushall()
    try:
        system.start()
        return soak(system, args.jobs, args.every, args.batch)
    finally:
        system.stop()


def _result_ttl() -> int:
    """The Redis result TTL the soaked fleet ran with (the default: the soak sets none)."""
    from taskfleet.config.settings import DEFAULT_RESULT_EXPIRES_S

    return DEFAULT_RESULT_EXPIRES_S


def render(path: Path) -> str:
    """The sections of a soak saved as JSON (``--from-json``), with today's report code."""
    sections = []
    for raw in json.loads(path.read_text()):
        result = SoakResult(**raw)
        result.marks = [
            Mark(**{**m, "processes": [ProcessMemory(**p) for p in m["processes"]]})
            for m in raw["marks"]
        ]
        sections.append(
            system_section(result, _result_ttl() if result.system == "taskfleet" else None)
        )
    return "\n".join(sections)


def main(argv: list[str] | None = None) -> int:
    """Soak every selected system and report.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        Exit status: 0, or 1 when a soak failed.
    """
    args = parse_args(argv)
    if args.from_json:
        print(render(args.from_json))
        return 0
    args.jobs = args.jobs or (QUICK_JOBS if args.quick else DEFAULT_JOBS)
    args.every = args.every or (QUICK_EVERY if args.quick else DEFAULT_EVERY)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    started = time.monotonic()
    sections: list[str] = []
    raw: list[dict[str, object]] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="taskfleet-soak-") as tmp:
        server = RedisProcess(Path(tmp) / "redis", durable=False)
        try:
            server.start()
            for name in args.systems.split(","):
                try:
                    result = _one(name, server.url, Path(tmp), args)
                except Exception as exc:
                    logging.getLogger(__name__).exception("soak of %s failed", name)
                    sections.append(f"### {name}\n\nfailed: {type(exc).__name__}: {exc}\n")
                    failed = True
                    continue
                ttl = _result_ttl() if name == "taskfleet" else None
                sections.append(system_section(result, ttl))
                print(sections[-1], flush=True)  # each system's table as soon as it is done
                raw.append(asdict(result))
        finally:
            server.stop()
            stop_started()
    header = (
        f"## W8 soak ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, code {code_version()})\n\n"
        f"{args.jobs:,} jobs per system, USS of every process every {args.every:,} jobs "
        f"(MiB), batches of {args.batch:,}; {time.monotonic() - started:,.0f} s in all.\n"
    )
    body = header + "\n" + "\n".join(sections)
    print(header)
    if not args.no_write:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (RESULTS_DIR / f"{LATEST}.md").write_text(body)
        (RESULTS_DIR / f"{LATEST}.json").write_text(json.dumps(raw, indent=2) + "\n")
    return 1 if failed else 0
