"""The task base class every taskfleet job uses, and the ``job`` decorator that declares one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

from celery import Celery, Task
from celery.exceptions import Ignore

from taskfleet.routing.topology import DEFAULT_INBOX, Pool

F = TypeVar("F", bound=Callable[..., Any])

#: Job kind -> pool, filled as tasks are declared; the router and the client read it.
JOB_POOLS: dict[str, Pool] = {}


class TaskfleetTask(Task):  # type: ignore[misc]
    """A Celery task that knows its pool and forwards jobs that arrived on the wrong queue.

    Bare ``send_task`` callers that name no queue publish to Celery's default queue, which
    the I/O pool consumes; a job found there is re-published, with the same id and priority,
    to its own pool's queue instead of running on the wrong pool.
    """

    pool: Pool = "cpu"
    typing = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
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
        return super().__call__(*args, **kwargs)


def job(app: Celery, name: str, pool: Pool, **options: Any) -> Callable[[F], F]:
    """Declare ``fn`` as the job kind ``name`` served by ``pool`` (``cpu`` or ``io``)."""

    def decorate(fn: F) -> F:
        JOB_POOLS[name] = pool
        return cast(F, app.task(name=name, base=TaskfleetTask, pool=pool, **options)(fn))

    return decorate
