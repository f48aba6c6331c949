"""The resilience middleware: dead letters and poison pills, retries, circuit breakers.

Register in this order (``taskfleet.tasks.job_app.MIDDLEWARE_CLASSES``):
``DeadLetterMiddleware``, ``RetryMiddleware``, ``BreakerMiddleware``. ``before_call`` runs in
that order (poison check, then breaker admission); ``on_error`` in reverse (the breaker
records the failure, the retry policy decides, and what is given up on is dead-lettered).

A redelivered job (its worker died, or its message was restored) whose id already has a
final result (SUCCESS, FAILURE, REVOKED, in Redis or Postgres) is acknowledged and not run
again: ``DeadLetterMiddleware`` looks before counting the delivery. Only redelivered messages
pay that lookup.

Messages no task can handle are dead-lettered by a worker hook instead
(``taskfleet.resilience.consumer``, installed by ``taskfleet.workers.hooks``).
"""

from __future__ import annotations

import base64
import inspect
import logging
import time
from typing import Any, ClassVar

from celery import Task, states
from celery.exceptions import Ignore, Reject, Retry

from taskfleet.resilience.breaker import BreakerOpen
from taskfleet.resilience.deadletter import (
    DeadLetter,
    Reason,
    store_amqp_metadata,
    store_redis,
)
from taskfleet.resilience.retry import RetryPolicy
from taskfleet.resilience.runtime import ATTEMPTS_PREFIX, DELIVERIES_PREFIX, runtime
from taskfleet.routing import ownership
from taskfleet.routing.wire import TaskMessage
from taskfleet.tasks.middleware import NOT_HANDLED, Middleware, task_option

log = logging.getLogger(__name__)
#: Celery's retry needs a bound; deferrals while a breaker is open must not hit it.
DEFER_MAX_RETRIES = 1_000_000
#: Shortest deferral while a breaker is open (seconds).
MIN_DEFER_S = 0.05
CONTROL_FLOW = (Retry, Ignore, Reject)


class DeadLettered(Reject):  # type: ignore[misc]
    """The job was dead-lettered; the worker rejects its message without requeue."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"dead-lettered ({reason}): {detail}".rstrip(": "), False)

    def __str__(self) -> str:
        return str(self.reason)


def _message_of(task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The job's message, rebuilt from the request (same body and taskfleet headers)."""
    req = task.request
    delivery = req.delivery_info or {}
    extra = {k: v for k, v in vars(req).items() if k.startswith("taskfleet_")}
    msg = TaskMessage.build(
        task.name,
        list(args),
        dict(kwargs),
        job_id=req.id,
        priority=int(delivery.get("priority") or 0),
        queue=str(delivery.get("routing_key") or ""),
        extra_headers=extra,
    )
    envelope: dict[str, Any] = {
        "body": base64.b64encode(msg.body).decode(),
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "headers": msg.headers,
        "properties": msg.properties(),
    }
    return envelope


def dead_letter_job(
    task: Task,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    reason: Reason,
    exc: BaseException | None,
    attempts: int,
) -> None:
    """Record a running job as dead (idempotent per job id); raises on RabbitMQ.

    On Redis the record goes on the DLQ list and the caller lets the error end the job as
    usual. On RabbitMQ, :class:`DeadLettered` is raised so the worker rejects the message
    without requeue and the broker's dead-letter exchange moves it.
    """
    rt = runtime()
    req = task.request
    queue = str((req.delivery_info or {}).get("routing_key") or "")
    info = rt.redis.hgetall(ATTEMPTS_PREFIX + req.id) if attempts > 1 else {}
    first_at = float(info[b"first_at"]) if b"first_at" in info else None
    letter = DeadLetter.from_exception(
        job_id=req.id,
        kind=task.name,
        queue=queue,
        reason=reason,
        exc=exc,
        attempts=attempts,
        first_attempt_at=first_at,
        replay_of=getattr(req, "taskfleet_replay_of", None),
        message=_message_of(task, args, kwargs),
    )
    dlq = rt.dlq_for_queue(queue)
    if rt.settings.broker_is_redis:
        store_redis(rt.dead_letter_redis, dlq, letter)
        log.warning("job %s (%s) dead-lettered to %s: %s", req.id, task.name, dlq, reason)
        return
    store_amqp_metadata(rt.redis, dlq, letter, rt.resilience.bookkeeping_ttl)
    log.warning("job %s (%s) rejected to %s: %s", req.id, task.name, dlq, reason)
    detail = f"{letter.exc_type}: {letter.exc_message}" if exc is not None else ""
    raise DeadLettered(reason, detail)


def _handed_over(task: Task) -> bool:
    """Whether a job that waited a heartbeat or more was handed to another worker since."""
    if getattr(task.request, ownership.FETCHED_AT_HEADER, None) is None:
        return False
    rt = runtime()
    knobs = rt.resilience
    if not knobs.fast_reclaim or rt.broker_redis is None:  # owners live in the broker's Redis
        return False
    return ownership.handed_over(task.request, rt.broker_redis, knobs.heartbeat_interval)


def final_state(task: Task) -> str | None:
    """The final state already stored for the running job's id, if any.

    Read through the result backend (taskfleet's reads Redis, then Postgres). A lookup that
    fails counts as no result: the job runs, as at-least-once delivery wants.
    """
    try:
        meta = task.backend.get_task_meta(task.request.id, cache=False)
    except Exception:
        log.warning("job %s: could not look up its result; running it", task.request.id)
        return None
    state = meta.get("status") if isinstance(meta, dict) else None
    return str(state) if state in states.READY_STATES else None


def _invalid_arguments(task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    try:
        inspect.signature(task.run).bind(*args, **kwargs)
    except TypeError:
        return True
    return False


def install(app: Any) -> None:
    """Register the three middleware on an app of one's own, in their order (idempotent).

    The worker's app registers them through ``taskfleet.tasks.job_app.MIDDLEWARE_CLASSES``;
    this is for other apps.
    """
    from taskfleet.tasks.middleware import add_middleware

    for middleware in (DeadLetterMiddleware(), RetryMiddleware(), BreakerMiddleware()):
        add_middleware(app, middleware)


class DeadLetterMiddleware(Middleware):
    """Dead-letters failed jobs, bounds poison pills (jobs that kill their worker), and
    skips redelivered jobs that already finished.

    Runs for every job (``dead_letter=False`` opts a job out of dead-lettering failures).
    On a first delivery it costs one dict lookup.
    """

    options: ClassVar[frozenset[str]] = frozenset({"dead_letter"})
    always: ClassVar[bool] = True

    def before_call(self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A redelivery: skip it if the job already finished; else count it, and past
        ``max_deliveries`` dead-letter instead of running.

        Raises:
            Ignore: the job's result is already final (the worker acks the message).
            DeadLettered: the job is a poison pill.
        """
        if _handed_over(task):
            log.warning(
                "job %s (%s) waited in this worker while it was cut off from Redis, and its "
                "delivery went to another worker: acknowledged here, not run",
                task.request.id,
                task.name,
            )
            raise Ignore()
        delivery = task.request.delivery_info or {}
        if not delivery.get("redelivered"):
            return NOT_HANDLED
        state = final_state(task)
        if state is not None:
            log.warning(
                "job %s (%s) redelivered but already finished (%s): acknowledged, not run again",
                task.request.id,
                task.name,
                state,
            )
            raise Ignore()
        rt = runtime()
        key = f"{DELIVERIES_PREFIX}{task.request.id}:{task.request.retries or 0}"
        pipe = rt.redis.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, rt.resilience.bookkeeping_ttl)
        redeliveries = int(pipe.execute()[0])
        deliveries = redeliveries + 1
        if deliveries <= rt.resilience.max_deliveries:
            return NOT_HANDLED
        detail = f"delivered {deliveries} times; its worker died on each of the previous ones"
        dead_letter_job(task, args, kwargs, "poison_pill", RuntimeError(detail), deliveries - 1)
        raise DeadLettered("poison_pill", detail)

    def on_error(
        self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], exc: BaseException
    ) -> Any:
        """Dead-letter what ends the job: retries exhausted, non-retryable, bad arguments."""
        if isinstance(exc, CONTROL_FLOW) or task_option(task, "dead_letter") is False:
            return NOT_HANDLED
        reason: Reason = getattr(task.request, "tf_give_up", None) or "non_retryable"
        if (isinstance(exc, TypeError) and _invalid_arguments(task, args, kwargs)) or type(
            exc
        ).__name__ == "ValidationError":
            reason = "invalid_arguments"
        attempts = int(getattr(task.request, "tf_attempts", 1))
        try:
            dead_letter_job(task, args, kwargs, reason, exc, attempts)
        except DeadLettered:
            raise
        except Exception:  # the job's own error must still end it
            log.exception("job %s: could not store its dead letter", task.request.id)
        return NOT_HANDLED


class BreakerMiddleware(Middleware):
    """``breaker="name"``: admit through a fleet-wide circuit breaker, record outcomes.

    While the breaker is open the job answers with the breaker's fallback, or is deferred
    (re-queued with a countdown to when the breaker may half-open); it never fails for it.
    """

    options: ClassVar[frozenset[str]] = frozenset({"breaker"})
    per_attempt: ClassVar[bool] = True

    def before_call(self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Ask the breaker; fallback or defer when refused."""
        breaker = runtime().breaker(str(task_option(task, "breaker")))
        admission = breaker.admit()
        if admission.allowed:
            task.request.tf_admission = admission
            return NOT_HANDLED
        task.request.tf_admission = None
        if breaker.fallback is not None:
            breaker.counters["fallbacks"] += 1
            return breaker.fallback(*args, **kwargs)
        countdown = max(admission.retry_at - time.time(), MIN_DEFER_S)
        raise task.retry(
            countdown=countdown,
            max_retries=DEFER_MAX_RETRIES,
            exc=BreakerOpen(breaker.name, admission.retry_at),
        )

    def after_call(
        self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any
    ) -> None:
        """Record a success."""
        admission = getattr(task.request, "tf_admission", None)
        if admission is not None:
            runtime().breaker(str(task_option(task, "breaker"))).record(admission, None)

    def on_error(
        self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], exc: BaseException
    ) -> Any:
        """Record a failure (control-flow exceptions are not the dependency failing)."""
        admission = getattr(task.request, "tf_admission", None)
        if admission is not None and not isinstance(exc, CONTROL_FLOW):
            runtime().breaker(str(task_option(task, "breaker"))).record(admission, exc)
        return NOT_HANDLED


class RetryMiddleware(Middleware):
    """``retry=RetryPolicy(...)``: retry failed jobs; short waits here, long ones re-queued.

    Attempts, the last error and the next try time are kept in ``taskfleet:attempts:<id>``
    (see ``attempt_info``); Celery's RETRY state also carries the error.
    """

    options: ClassVar[frozenset[str]] = frozenset({"retry"})

    def _note_failure(self, task: Task, exc: BaseException) -> tuple[int, float]:
        rt = runtime()
        key = ATTEMPTS_PREFIX + task.request.id
        now = time.time()
        pipe = rt.redis.pipeline(transaction=False)
        pipe.hincrby(key, "attempts", 1)
        pipe.hsetnx(key, "first_at", repr(now))
        pipe.hset(key, "last_error", f"{type(exc).__name__}: {exc}"[:2000])
        pipe.hget(key, "first_at")
        pipe.expire(key, rt.resilience.bookkeeping_ttl)
        attempts, _, _, first_at, _ = pipe.execute()
        return int(attempts), now - float(first_at)

    def _downstream(self, task: Task) -> tuple[list[Middleware], list[Middleware]]:
        stack = task.active_middleware
        mine = stack.index(self)
        per_attempt = [m for m in stack[mine + 1 :] if getattr(m, "per_attempt", False)]
        return per_attempt, stack[:mine]

    def on_error(
        self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], exc: BaseException
    ) -> Any:
        """Decide: retry in process, re-queue with a countdown, or give up."""
        if isinstance(exc, CONTROL_FLOW):
            return NOT_HANDLED
        policy: RetryPolicy = task_option(task, "retry")
        per_attempt, earlier = self._downstream(task)
        inprocess_limit = runtime().resilience.inprocess_wait
        while True:
            attempt, elapsed = self._note_failure(task, exc)
            decision = policy.decide(attempt, exc, elapsed)
            if not decision.retry:
                task.request.tf_give_up = decision.reason
                task.request.tf_attempts = attempt
                for middleware in reversed(earlier):
                    answer = middleware.on_error(task, args, kwargs, exc)
                    if answer is not NOT_HANDLED:
                        return answer
                raise exc
            next_try = time.time() + decision.wait
            runtime().redis.hset(ATTEMPTS_PREFIX + task.request.id, "next_try_at", repr(next_try))
            log.info(
                "job %s (%s) attempt %d failed: %r; retrying in %.2fs",
                task.request.id,
                task.name,
                attempt,
                exc,
                decision.wait,
            )
            if decision.wait > inprocess_limit:
                raise task.retry(countdown=decision.wait, exc=exc, max_retries=DEFER_MAX_RETRIES)
            time.sleep(decision.wait)  # cooperative under gevent
            for middleware in per_attempt:
                answer = middleware.before_call(task, args, kwargs)
                if answer is not NOT_HANDLED:
                    return answer
            try:
                result = task.run(*args, **kwargs)
            except Exception as again:
                for middleware in reversed(per_attempt):
                    middleware.on_error(task, args, kwargs, again)
                exc = again
                continue
            for middleware in reversed(per_attempt):
                middleware.after_call(task, args, kwargs, result)
            return result
