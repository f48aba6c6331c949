"""Deliveries a channel could not restore because Redis was down, restored by the next one.

When a worker loses its Redis connection (a Redis restart, a network cut), Celery closes the
channel and kombu restores the channel's unacked deliveries to their queues, on a
connection that is down too: the restore raises, the deliveries stay in the ``unacked``
hash, and since the worker itself lives on (its heartbeat is fresh) no reclaimer takes them.
They would wait for the visibility timeout (an hour). Deliveries whose unacked record had
not been sent yet would not even be there.

So a channel that fails to restore keeps what it held, in this process
(:func:`defer`), and the next channel the process opens, once Redis answers again, puts it
back (:func:`restore_deferred`): from the ``unacked`` record when it is there (kombu's own
``restore_by_tag``), else from the message the worker held. A delivery restored twice
(another reclaimer was faster) is marked redelivered, and a redelivered job whose result
is already final is skipped, so the worst case is a skipped duplicate, never a loss.
"""

from __future__ import annotations

import logging
from typing import Any

import redis

log = logging.getLogger(__name__)

#: Errors that mean "Redis unreachable now": the restore is kept for the next channel.
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, OSError)

#: unacked key -> delivery tag -> (message payload, exchange, routing key), per process.
_deferred: dict[str, dict[Any, tuple[Any, str, str]]] = {}


def held(delivered: dict[Any, Any]) -> dict[Any, tuple[Any, str, str]]:
    """What a channel holds: each delivery's payload and where it came from."""
    return {
        tag: (m._raw, m.delivery_info["exchange"], m.delivery_info["routing_key"])
        for tag, m in delivered.items()
    }


def defer(unacked_key: str, deliveries: dict[Any, tuple[Any, str, str]], exc: Exception) -> None:
    """Keep ``deliveries`` for the next channel of this process to restore."""
    if not deliveries:
        return
    _deferred.setdefault(unacked_key, {}).update(deliveries)
    log.warning(
        "Redis unreachable while restoring %d unacked deliveries (%s): the next connection "
        "restores them",
        len(deliveries),
        exc,
    )


#: owner's tags key -> stamps of fetch script calls whose reply never came back.
_lost_fetches: dict[str, set[float]] = {}


def lost_fetch(tags_key: str, stamp: float) -> None:
    """A fetch script call (atomic fetch) went unanswered: the connection dropped after it
    was sent. If it ran, its delivery is recorded under this owner with ``stamp`` but held
    by no channel, and the owner lives on, so no reclaimer takes it: the next channel does.
    """
    _lost_fetches.setdefault(tags_key, set()).add(stamp)


def pending() -> int:
    """Deliveries (and unanswered fetches) this process still has to restore."""
    return sum(len(d) for d in _deferred.values()) + sum(map(len, _lost_fetches.values()))


def restore_deferred(qos: Any) -> list[Any]:
    """Restore, through ``qos``'s channel, what an earlier channel could not.

    Returns:
        The tags restored (the caller drops them from its owner's hash).
    """
    restored = _restore_lost_fetches(qos)
    deliveries = _deferred.get(qos.unacked_key)
    if not deliveries:
        return restored
    try:
        client = qos.channel._create_client()
        for tag, (payload, exchange, routing_key) in list(deliveries.items()):
            if client.hexists(qos.unacked_key, tag):
                qos.restore_by_tag(tag, client=client)
            else:  # its record never landed: put back the message the worker held
                pipe = client.pipeline()
                qos.channel._do_restore_message(payload, exchange, routing_key, pipe)
                pipe.execute()
            del deliveries[tag]
            restored.append(tag)
    except UNREACHABLE as exc:
        log.warning("still cannot restore %d deliveries (%s)", len(deliveries), exc)
    if restored:
        log.info("restored %d deliveries held when Redis went away", len(restored))
    return restored


def _restore_lost_fetches(qos: Any) -> list[Any]:
    """Restore the deliveries that unanswered fetches recorded for ``qos``'s owner."""
    stamps = _lost_fetches.pop(qos.owner_tags_key or "", None)
    if not stamps:
        return []
    restored: list[Any] = []
    try:
        client = qos.channel._create_client()
        held = client.hgetall(qos.owner_tags_key)
        for tag, stamp in held.items():
            if float(stamp) in stamps:
                qos.restore_by_tag(tag, client=client)
                restored.append(tag)
    except UNREACHABLE as exc:
        lost_fetches = _lost_fetches.setdefault(qos.owner_tags_key, set())
        lost_fetches.update(stamps)  # for the next channel
        log.warning("cannot restore what an unanswered fetch took yet (%s)", exc)
    if restored:
        log.info("restored %d deliveries fetched when the connection dropped", len(restored))
    return restored
