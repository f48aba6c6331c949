"""``python -m taskfleet.cli``: the same as the ``taskfleet`` command."""

from __future__ import annotations

from taskfleet.cli import main

main()
