"""Dead-lettering messages no task can handle, in the worker's consumer.

Unknown task names, bodies that do not decode, disallowed content types (pickle) and
oversize payloads are seen by Celery's consumer before any task code runs; stock Celery logs
and drops (or acks) them. A consumer bootstep (added to the worker's app by
``taskfleet.workers.hooks.install_worker_hooks``) wraps the consumer's handlers
(``on_unknown_message``, ``on_unknown_task``, ``on_invalid_task``, ``on_decode_error``) and
its task handler (for the size limit) so each such message is recorded as a dead letter with
its raw body and headers, then rejected without requeue (which, on RabbitMQ, sends it through
the broker's dead-letter exchange).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from celery import bootsteps
from kombu.exceptions import ContentDisallowed

from taskfleet.config.app_settings import settings_of
from taskfleet.resilience.deadletter import (
    DeadLetter,
    Reason,
    raw_message,
    store_amqp_metadata,
    store_redis,
)
from taskfleet.routing import ownership

log = logging.getLogger(__name__)


def dead_letter_message(message: Any, reason: Reason, exc: BaseException | None) -> None:
    """Store a raw broker message as a dead letter (never raises)."""
    from taskfleet.resilience.runtime import runtime

    try:
        rt = runtime()
        headers = dict(getattr(message, "headers", None) or {})
        delivery = dict(getattr(message, "delivery_info", None) or {})
        queue = str(delivery.get("routing_key") or "")
        job_id = str(
            headers.get("id")
            or getattr(message, "properties", {}).get("correlation_id")
            or getattr(message, "delivery_tag", "")
            or ""
        )
        letter = DeadLetter.from_exception(
            job_id=job_id or "unknown",
            kind=str(headers.get("task") or ""),
            queue=queue,
            reason=reason,
            exc=exc,
            replay_of=headers.get("taskfleet_replay_of"),
            message=raw_message(
                message.body,
                message.content_type,
                message.content_encoding,
                headers,
                dict(getattr(message, "properties", None) or {}),
            ),
        )
        dlq = rt.dlq_for_queue(queue)
        if rt.settings.broker_is_redis:
            store_redis(rt.dead_letter_redis, dlq, letter)
        else:
            store_amqp_metadata(rt.redis, dlq, letter, rt.resilience.bookkeeping_ttl)
        log.warning("message %s on %s dead-lettered to %s: %s", job_id, queue, dlq, reason)
    except Exception:
        log.exception("could not dead-letter a %s message", reason)


def _reject(message: Any) -> None:
    with contextlib.suppress(Exception):
        if not message.acknowledged:
            message.reject(requeue=False)


class DeadLetterConsumerStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Wraps the consumer's handlers of unusable messages (installed before it starts)."""

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        max_bytes = settings_of(c.app).max_payload_bytes
        unknown_message, unknown_task = c.on_unknown_message, c.on_unknown_task
        invalid_task, create_handler = c.on_invalid_task, c.create_task_handler

        def on_unknown_message(body: Any, message: Any) -> None:
            dead_letter_message(message, "malformed", None)
            unknown_message(body, message)

        def on_unknown_task(body: Any, message: Any, exc: BaseException) -> None:
            dead_letter_message(message, "unknown_task", exc)
            unknown_task(body, message, exc)

        def on_invalid_task(body: Any, message: Any, exc: BaseException) -> None:
            reason: Reason = (
                "content_disallowed" if isinstance(exc, ContentDisallowed) else "malformed"
            )
            dead_letter_message(message, reason, exc)
            invalid_task(body, message, exc)

        def on_decode_error(message: Any, exc: BaseException) -> None:
            reason: Reason = (
                "content_disallowed" if isinstance(exc, ContentDisallowed) else "malformed"
            )
            log.error("cannot decode message (%s): %s", message.content_type, exc)
            dead_letter_message(message, reason, exc)
            _reject(message)  # stock Celery acks, which on RabbitMQ skips the DLX

        def create_task_handler(*args: Any, **kw: Any) -> Callable[[Any], Any]:
            handler = create_handler(*args, **kw)

            def on_task_received(message: Any) -> Any:
                size = len(message.body or b"")
                if size > max_bytes:
                    error = ValueError(f"payload is {size} bytes, over the {max_bytes}-byte limit")
                    dead_letter_message(message, "oversize", error)
                    _reject(message)
                    return None
                ownership.stamp(message)
                return handler(message)

            return on_task_received

        c.on_unknown_message = on_unknown_message
        c.on_unknown_task = on_unknown_task
        c.on_invalid_task = on_invalid_task
        c.on_decode_error = on_decode_error
        c.create_task_handler = create_task_handler
