"""A job that waited in a cut-off worker does not start once its delivery was handed over.

A worker cut off from Redis (a network partition, a stalled host) stops heartbeating; once
its alive key expires the reclaimer hands its deliveries to other workers. The jobs it was
running when cut off run twice, which at-least-once allows. But the jobs it had reserved
and not started yet would also start once the link is back, a duplicate nothing required.

So the worker stamps each delivery it receives (:func:`stamp`: owner, tag, time), and a job
that waited at least ``threshold`` seconds before starting asks Redis whether its owner
still holds the delivery under the same stamp (:func:`handed_over`), one HGET: a delivery
handed over and fetched again by the same worker is a new one, with a new stamp. Only a wait that long can
have let the heartbeat expire, so other jobs pay nothing. A job handed over is acknowledged
without running; its removal is conditional on the owner still holding the tag
(``taskfleet.routing.bookkeeping``), so the ack leaves the new holder's record alone.
"""

from __future__ import annotations

import time
from typing import Any

from taskfleet.routing import owners

#: Headers a worker adds to each delivery it receives (they reach ``task.request``).
OWNER_HEADER = "taskfleet_owner"
TAG_HEADER = "taskfleet_delivery_tag"
FETCHED_AT_HEADER = "taskfleet_fetched_at"


def stamp(message: Any) -> None:
    """Record on ``message`` which owner received it, under which tag, and when: the stamp
    of its unacked record (``record_stamp``, set by ``taskfleet.routing.bookkeeping``).

    The headers are replaced by a copy: the original dict is the payload that a restore
    pushes back to the queue.
    """
    owner = owners.current()
    if owner is None:
        return
    fetched_at = getattr(message, "record_stamp", None)
    if fetched_at is None:  # no record of its own to compare with: no check
        return
    message.headers = {
        **(message.headers or {}),
        OWNER_HEADER: owner.id,
        TAG_HEADER: message.delivery_tag,
        FETCHED_AT_HEADER: fetched_at,
    }


def handed_over(request: Any, client: Any, threshold: float, now: float | None = None) -> bool:
    """Whether the delivery of the job about to start now belongs to another consumer.

    Args:
        request: The job's ``task.request`` (stamped or not).
        client: A Redis client.
        threshold: Waits shorter than this are not checked.
        now: The current time (injected by tests).
    """
    owner = getattr(request, OWNER_HEADER, None)
    tag = getattr(request, TAG_HEADER, None)
    fetched_at = getattr(request, FETCHED_AT_HEADER, None)
    if owner is None or tag is None or not isinstance(fetched_at, int | float):
        return False
    waited = (time.time() if now is None else now) - fetched_at
    if waited < threshold:
        return False
    held = client.hget(owners.tags_key(owner), tag)
    return held is None or float(held) != float(fetched_at)
