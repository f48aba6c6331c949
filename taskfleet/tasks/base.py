"""The task base class every taskfleet job uses, and the ``job`` decorator that declares one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

from celery import Celery, Task
from celery.exceptions import Ignore

from taskfleet.routing.topology import DEFAULT_INBOX, Pool
from taskfleet.tasks.middleware import NOT_HANDLED, Middleware, owned_options, registered
from taskfleet.tasks.table import check_declared
from taskfleet.workers.inline_limits import job_code_returned

F = TypeVar("F", bound=Callable[..., Any])

#: Options that only make sense through a middleware; naming one no middleware owns is an error.
MIDDLEWARE_OPTION_NAMES = frozenset({"retry", "breaker", "cache", "rate_limit_key", "dead_letter"})


class TaskfleetTask(Task):  # type: ignore[misc]
    """A Celery task that knows its pool and forwards jobs that arrived on the wrong queue.

    Bare ``send_task`` callers that name no queue publish to Celery's default queue, which
    the I/O pool consumes; a job found there is re-published, with the same id and priority,
    to its own pool's queue instead of running on the wrong pool.
    """

    pool: Pool = "cpu"
    typing = True
    _active_middleware: list[Middleware] | None = None

    @property
    def active_middleware(self) -> list[Middleware]:
        """The registered middleware this task uses (computed once)."""
        if self._active_middleware is None:
            self._active_middleware = [m for m in registered(self.app) if m.applies_to(self)]
        return self._active_middleware

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._call_through_middleware(*args, **kwargs)
        finally:
            # A solo worker's time limit covers the job's own code and middleware, never
            # the result write and ack Celery does after this returns (``inline_limits``).
            job_code_returned()

    def _call_through_middleware(self, *args: Any, **kwargs: Any) -> Any:
        delivery = self.request.delivery_info
        if delivery and delivery.get("routing_key") == DEFAULT_INBOX and not self.request.is_eager:
            self.apply_async(
                args,
                kwargs,
                task_id=self.request.id,
                priority=delivery.get("priority"),
                headers={"taskfleet_forwarded_from": DEFAULT_INBOX},
            )
            raise Ignore()
        stack = self.active_middleware
        if not stack:
            return super().__call__(*args, **kwargs)
        for middleware in stack:
            answer = middleware.before_call(self, args, kwargs)
            if answer is not NOT_HANDLED:
                return answer
        try:
            result = super().__call__(*args, **kwargs)
        except Exception as exc:
            for middleware in reversed(stack):
                answer = middleware.on_error(self, args, kwargs, exc)
                if answer is not NOT_HANDLED:
                    return answer
            raise
        for middleware in reversed(stack):
            middleware.after_call(self, args, kwargs, result)
        return result


def job(app: Celery, name: str, pool: Pool, **options: Any) -> Callable[[F], F]:
    """Declare ``fn`` as the job kind ``name`` served by ``pool`` (``cpu`` or ``io``).

    Options owned by a registered middleware (see ``taskfleet.tasks.middleware``) are stored
    on the task as ``tf_<name>``; every other option goes to Celery's ``app.task``.

    A shipped kind must be declared on the pool the job table gives it
    (:mod:`taskfleet.tasks.table`, which the router and the client read); other kinds (a
    test's own app) are routed by their task's pool.

    Raises:
        TypeError: an option looks like a middleware option but no middleware owns it.
        PoolMismatch: ``name`` is in the job table with another pool.
    """
    check_declared(name, pool)
    owned = owned_options(app)
    # Functions become task-class attributes: staticmethod keeps them from binding to the task.
    middleware_options = {
        f"tf_{k}": staticmethod(v) if callable(v) else v for k, v in options.items() if k in owned
    }
    celery_options = {k: v for k, v in options.items() if k not in owned}
    unknown = sorted(k for k in celery_options if k in MIDDLEWARE_OPTION_NAMES)
    if unknown:
        raise TypeError(f"job {name!r}: no registered middleware owns option(s) {unknown}")

    task_options = {**celery_options, **middleware_options}

    def decorate(fn: F) -> F:
        return cast(F, app.task(name=name, base=TaskfleetTask, pool=pool, **task_options)(fn))

    return decorate
