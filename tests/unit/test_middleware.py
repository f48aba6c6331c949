"""Middleware hooks: no-ops by default, ordering, short-circuit, option ownership."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from celery import Celery

from taskfleet.tasks.base import TaskfleetTask, job
from taskfleet.tasks.middleware import NOT_HANDLED, Middleware, add_middleware, task_option


class Recorder(Middleware):
    options: ClassVar[frozenset[str]] = frozenset({"cache"})

    def __init__(self) -> None:
        self.calls: list[str] = []

    def before_call(self, task: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.calls.append("before")
        return "cached" if args and args[0] == "hit" else NOT_HANDLED

    def after_call(
        self, task: Any, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any
    ) -> None:
        self.calls.append(f"after:{result}")

    def on_error(
        self, task: Any, args: tuple[Any, ...], kwargs: dict[str, Any], exc: BaseException
    ) -> Any:
        self.calls.append(f"error:{type(exc).__name__}")
        return "fallback" if args and args[0] == "soft" else NOT_HANDLED


@pytest.fixture
def app_and_recorder() -> tuple[Celery, Recorder]:
    app = Celery("mw-test", task_cls=TaskfleetTask, set_as_current=False)
    return app, add_middleware(app, Recorder())  # type: ignore[return-value]


def test_plain_task_runs_no_middleware(app_and_recorder: tuple[Celery, Recorder]) -> None:
    app, recorder = app_and_recorder

    @job(app, "t.plain", "cpu")
    def plain(x: str) -> str:
        return x.upper()

    assert plain("a") == "A"
    assert recorder.calls == []


def test_owned_option_activates_hooks(app_and_recorder: tuple[Celery, Recorder]) -> None:
    app, recorder = app_and_recorder

    @job(app, "t.cached", "cpu", cache=True)
    def cached(x: str) -> str:
        if x in ("boom", "soft"):
            raise ValueError(x)
        return x.upper()

    assert task_option(cached, "cache") is True
    assert cached("a") == "A"
    assert cached("hit") == "cached"
    assert cached("soft") == "fallback"
    with pytest.raises(ValueError, match="boom"):
        cached("boom")
    assert recorder.calls == [
        "before",
        "after:A",
        "before",
        "before",
        "error:ValueError",
        "before",
        "error:ValueError",
    ]


def test_unowned_middleware_option_is_refused() -> None:
    app = Celery("mw-test-2", task_cls=TaskfleetTask, set_as_current=False)
    with pytest.raises(TypeError, match="breaker"):
        job(app, "t.breaker", "cpu", breaker="payments")
