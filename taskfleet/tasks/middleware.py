"""Middleware: hooks around every job that do nothing unless a task asks for them.

Modelled on dramatiq's middleware. Each middleware declares the task options it owns
(``retry``, ``breaker``, ``cache``…); ``job(..., breaker="payments")`` is refused unless some
registered middleware owns ``breaker``. A task only runs the middleware whose options it sets
(or that declare ``always = True``), computed once per task, so a plain job pays nothing.

Hook order: ``before_call`` in registration order (the first that returns a value other than
``NOT_HANDLED`` short-circuits the job with that value: a cache hit, a breaker fallback);
then the job; then ``on_error`` in reverse order (one may return a value to use instead of
raising, or raise, e.g. ``Retry``), or ``after_call`` in reverse order with the result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Final

if TYPE_CHECKING:
    from celery import Celery, Task


class _NotHandled:
    def __repr__(self) -> str:
        return "NOT_HANDLED"


NOT_HANDLED: Final = _NotHandled()
MIDDLEWARE_ATTR = "taskfleet_middleware"


class Middleware:
    """A hook set; every hook is a no-op by default."""

    #: Task options this middleware owns (passed to ``job(...)``, read with ``task_option``).
    options: ClassVar[frozenset[str]] = frozenset()
    #: Run for every task, whether or not it sets one of ``options`` (e.g. metrics).
    always: ClassVar[bool] = False

    def applies_to(self, task: Task) -> bool:
        """Whether ``task`` uses this middleware."""
        return self.always or any(task_option(task, name) is not None for name in self.options)

    def before_call(self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Before the job body runs; return a value to answer the job without running it."""
        return NOT_HANDLED

    def after_call(
        self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any
    ) -> None:
        """After the job body returned ``result``."""

    def on_error(
        self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], exc: BaseException
    ) -> Any:
        """The job body raised; return a value to use instead, raise, or NOT_HANDLED."""
        return NOT_HANDLED


def task_option(task: Task, name: str) -> Any:
    """The value of a middleware-owned option on a task (None when unset)."""
    return getattr(task, f"tf_{name}", None)


def registered(app: Celery) -> list[Middleware]:
    """The middleware registered on an app, in order."""
    stack: list[Middleware] | None = getattr(app, MIDDLEWARE_ATTR, None)
    if stack is None:
        stack = []
        setattr(app, MIDDLEWARE_ATTR, stack)
    return stack


def add_middleware(app: Celery, middleware: Middleware) -> Middleware:
    """Register ``middleware`` on ``app`` (once per type)."""
    stack = registered(app)
    if not any(type(m) is type(middleware) for m in stack):
        stack.append(middleware)
    return middleware


def owned_options(app: Celery) -> frozenset[str]:
    """Every option some registered middleware owns."""
    return frozenset().union(*(m.options for m in registered(app)))
