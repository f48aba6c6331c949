"""Flower's credentials are never on a command line, and Flower binds to loopback.

The Flower ``taskfleet up`` starts (its planned argv and environment), and the hand-run
command the README gives. ``tests/integration/test_supervisor_restarts.py`` (through
``tests/support/up_exposure.py``) checks the same against a running ``taskfleet up``.
"""

from __future__ import annotations

import re
from pathlib import Path

from taskfleet.config import load_settings
from taskfleet.fleet.children import FleetOptions
from taskfleet.fleet.environment import FLOWER_AUTH_ENV
from taskfleet.fleet.flower import FLOWER_HOST, FlowerAuth
from taskfleet.fleet.plan import plan_children

README = Path(__file__).resolve().parents[2] / "README.md"
LOOPBACK = "127.0.0.1"
FLOWER_COMMAND = re.compile(r"celery -A taskfleet\.app flower\b.*")


def test_up_gives_flower_its_password_in_its_environment_only(tmp_path: Path) -> None:
    auth = FlowerAuth("admin", "s3cret-Pw-for-the-test", generated=False)
    settings = load_settings(cpu_concurrency=1)
    plan = plan_children(settings, FleetOptions(), broker="redis://x", data_dir=tmp_path, auth=auth)
    flower = next(child for child in plan if child.role == "flower")
    assert FLOWER_HOST == LOOPBACK
    assert f"--address={LOOPBACK}" in flower.argv
    assert flower.extra_env == {FLOWER_AUTH_ENV: auth.env_value}
    for child in plan:
        assert auth.password not in " ".join(child.argv), child.name
        if child is not flower:
            assert auth.password not in " ".join(child.extra_env.values()), child.name


def test_the_readmes_flower_command_binds_loopback_and_reads_its_password_from_the_env() -> None:
    text = README.read_text()
    commands = FLOWER_COMMAND.findall(text)
    assert commands, "the README no longer shows how to run Flower by hand"
    for command in commands:
        assert f"--address={LOOPBACK}" in command, command
        assert "--basic-auth" not in command, command
    assert re.search(rf"^export {FLOWER_AUTH_ENV}=", text, re.MULTILINE)
    assert not re.search(r"--basic-auth=\S", text)
