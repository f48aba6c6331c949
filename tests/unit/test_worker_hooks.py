"""Worker hooks are installed by one call, never by importing a module.

Each check runs in a fresh interpreter: Celery's signals are process-wide, so the test
process, which has imported much of taskfleet already, cannot tell who connected what.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.probe import run_probe

#: Helpers of both probes: every Celery signal's receivers, as ``module.qualname``.
RECEIVERS = """
import json, weakref
from celery import signals
from celery.utils.dispatch import Signal

SIGNALS = {n: s for n in dir(signals) if isinstance(s := getattr(signals, n), Signal)}

def receivers():
    out = {}
    for name, signal in SIGNALS.items():
        for _, ref in signal.receivers:
            fn = ref() if isinstance(ref, weakref.ReferenceType) else ref
            out.setdefault(name, []).append(f"{fn.__module__}.{fn.__qualname__}")
    return out

def added(before, after):
    return {n: [r for r in rs if r not in before.get(n, [])] for n, rs in after.items()
            if [r for r in rs if r not in before.get(n, [])]}
"""

#: Import every taskfleet module but the entry point, then the entry point.
IMPORT_ALL_PROBE = (
    RECEIVERS
    + """
import importlib, pkgutil, sys
import celery
import taskfleet

before = receivers()
modules = sorted(
    info.name
    for info in pkgutil.walk_packages(taskfleet.__path__, "taskfleet.")
    if info.name != "taskfleet.app" and not info.name.endswith(".__main__")
)
for name in modules:
    importlib.import_module(name)
after_modules = receivers()
app_loaded = "taskfleet.app" in sys.modules
import taskfleet.app
print(json.dumps({
    "modules": modules,
    "app_loaded_by_others": app_loaded,
    "added_by_modules": added(before, after_modules),
    "added_by_app": added(after_modules, receivers()),
}))
"""
)

#: Install the hooks twice on a fresh app (no job module imported).
INSTALL_PROBE = (
    RECEIVERS
    + """
from taskfleet.app_config import create_app
from taskfleet.workers import signals as lifecycle
from taskfleet.workers.hooks import install_worker_hooks

app = create_app()
def steps():
    return {bp: sorted(f"{s.__module__}.{s.__name__}" for s in app.steps[bp])
            for bp in ("worker", "consumer")}
before = receivers()
install_worker_hooks(app)
once = {"signals": added(before, receivers()), "steps": steps()}
install_worker_hooks(app)
twice = {"signals": added(before, receivers()), "steps": steps()}
print(json.dumps({"once": once, "twice": twice, "serves": lifecycle._app is app}))
"""
)

SIGNALS = "taskfleet.workers.signals"
METRICS = "taskfleet.observability.jobs"
TRACING = "taskfleet.observability.tracing"
#: What a worker gets, per signal in connection order (the list in ``workers/hooks.py``).
EXPECTED_SIGNALS = {
    "worker_init": [
        "taskfleet.workers.job_logs.quiet_job_lines",
        "taskfleet.workers.inline_limits.enforce_in_solo_worker",
        f"{SIGNALS}.open_solo_pools",
        f"{SIGNALS}.record_before_inline_jobs",
        f"{SIGNALS}.batch_fetches_in_solo_worker",
        f"{SIGNALS}.start_heartbeat",
        f"{SIGNALS}.trace_inline_jobs",
    ],
    "worker_process_init": [f"{SIGNALS}.open_child_pools", f"{TRACING}.instrument_worker"],
    "worker_ready": [
        f"{SIGNALS}.start_persister",
        f"{SIGNALS}.check_redis_policy",
        f"{SIGNALS}.settle_when_ready",
        f"{SIGNALS}.mark_ready",
    ],
    "worker_process_shutdown": [
        f"{SIGNALS}.close_child_pools",
        f"{METRICS}.mark_child_dead",
        f"{TRACING}.flush_worker",
    ],
    "worker_shutdown": [f"{SIGNALS}.stop_main_process", f"{TRACING}.flush_worker"],
    "task_prerun": [f"{METRICS}.on_task_prerun"],
    "task_postrun": [f"{METRICS}.on_task_postrun"],
}
EXPECTED_STEPS = {
    "worker": [
        "taskfleet.workers.inline_limits.LiftBackstopWhenIdle",
        "taskfleet.workers.timers.PurgeCancelledTimers",
    ],
    "consumer": [
        "taskfleet.resilience.consumer.DeadLetterConsumerStep",
        "taskfleet.workers.prefetch.SparePrefetchStep",
        "taskfleet.workers.standby.StandbyStep",
    ],
}


@pytest.fixture(scope="module")
def imported_all() -> dict[str, Any]:
    """What importing every taskfleet module, then ``taskfleet.app``, connected."""
    return run_probe(IMPORT_ALL_PROBE)


def test_importing_any_module_connects_no_signal_receiver(imported_all: dict[str, Any]) -> None:
    """Importing all of taskfleet (entry point aside) adds no receiver to any Celery signal."""
    assert len(imported_all["modules"]) > 100  # the walk found the package
    assert not imported_all["app_loaded_by_others"], "a module imports taskfleet.app"
    assert imported_all["added_by_modules"] == {}


def test_the_entry_point_installs_exactly_the_worker_hooks(imported_all: dict[str, Any]) -> None:
    """``import taskfleet.app`` connects the listed handlers, in order, and nothing else."""
    assert imported_all["added_by_app"] == EXPECTED_SIGNALS


def test_install_worker_hooks_installs_the_expected_set_once() -> None:
    """One call installs every handler and bootstep; a second call installs nothing more."""
    found = run_probe(INSTALL_PROBE)
    assert found["once"]["signals"] == EXPECTED_SIGNALS
    assert found["once"]["steps"] == EXPECTED_STEPS
    assert found["twice"] == found["once"]
    assert found["serves"]


def test_the_hook_list_matches_the_expected_set() -> None:
    """The table in ``workers/hooks.py`` is the set these tests expect (one place, in order)."""
    from taskfleet.workers.hooks import BOOTSTEPS, SIGNAL_HOOKS

    listed: dict[str, list[str]] = {}
    for signal, handler in SIGNAL_HOOKS:
        listed.setdefault(str(signal.name), []).append(
            f"{handler.__module__}.{handler.__qualname__}"
        )
    assert listed == EXPECTED_SIGNALS
    steps: dict[str, list[str]] = {}
    for blueprint, step in BOOTSTEPS:
        steps.setdefault(blueprint, []).append(f"{step.__module__}.{step.__name__}")
    assert {bp: sorted(names) for bp, names in steps.items()} == EXPECTED_STEPS
