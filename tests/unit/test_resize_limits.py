"""The resize control commands refuse arguments out of range before touching the pool."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from taskfleet.config.autoscale import MAX_RESIZE_STEP, load_autoscale_settings
from taskfleet.config.settings import ConfigError
from taskfleet.scheduler.control import (
    MAX_GREEN_SLOTS,
    taskfleet_pool_grow,
    taskfleet_pool_shrink,
)


class GreenPool:
    """Stands in for Celery's gevent pool: a size, and the resizes asked of it."""

    def __init__(self, size: int) -> None:
        self.num_processes = size
        self.calls: list[tuple[str, int]] = []

    def grow(self, n: int) -> None:
        self.calls.append(("grow", n))
        self.num_processes += n

    def shrink(self, n: int) -> None:
        self.calls.append(("shrink", n))
        self.num_processes -= n

    def maintain_pool(self) -> None:
        """Nothing to fork."""


def _state(pool: GreenPool) -> Any:
    consumer = SimpleNamespace(
        pool=pool,
        controller=SimpleNamespace(autoscaler=None, hub=None),
        _update_prefetch_count=lambda n: None,
    )
    return SimpleNamespace(consumer=consumer)


@pytest.mark.parametrize("n", [0, -1, MAX_RESIZE_STEP + 1, 10**9, "3", 2.5, True, None])
@pytest.mark.parametrize("command", [taskfleet_pool_grow, taskfleet_pool_shrink])
def test_out_of_range_steps_are_refused_with_a_reason(command: Any, n: Any) -> None:
    pool = GreenPool(10)
    answer = command(_state(pool), n=n)
    assert set(answer) == {"error"}
    assert f"from 1 to {MAX_RESIZE_STEP}" in answer["error"]
    assert repr(n) in answer["error"]
    assert pool.calls == []


def test_a_grow_past_the_ceiling_is_refused() -> None:
    pool = GreenPool(MAX_GREEN_SLOTS - 5)
    answer = taskfleet_pool_grow(_state(pool), n=6)
    assert f"ceiling of {MAX_GREEN_SLOTS}" in answer["error"]
    assert pool.calls == []
    assert taskfleet_pool_grow(_state(pool), n=5) == {"ok": "pool grown"}
    assert pool.calls == [("grow", 5)]


def test_steps_in_range_resize() -> None:
    pool = GreenPool(10)
    assert "ok" in taskfleet_pool_shrink(_state(pool), n=MAX_RESIZE_STEP // 100)
    assert pool.calls == [("shrink", MAX_RESIZE_STEP // 100)]


@pytest.mark.usefixtures("clean_env")
def test_the_autoscalers_steps_fit_the_commands_ceiling() -> None:
    with pytest.raises(ConfigError, match="TASKFLEET_AUTOSCALE_IO_STEP_UP"):
        load_autoscale_settings(io_step_up=MAX_RESIZE_STEP + 1)
