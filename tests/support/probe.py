"""Run a snippet in a fresh interpreter and read the JSON it prints last."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PROBE_TIMEOUT_S = 120.0


def run_probe(
    source: str,
    *args: str,
    python: str = sys.executable,
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
) -> Any:
    """Run ``source`` with ``python -c`` and return its last printed line, parsed as JSON.

    Args:
        source: The program; it prints one JSON document as its last line.
        args: Its ``sys.argv[1:]``.
        python: The interpreter (another venv's, for an install check).
        env: The whole environment (default: this process's).
        cwd: Where it runs (the repository root by default).

    Raises:
        AssertionError: It exited non-zero (the message is its stderr).
    """
    done = subprocess.run(
        [python, "-c", source, *args],
        env=None if env is None else dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])
