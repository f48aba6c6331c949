"""kombu's restore of an unacked delivery, recorded instead of sent.

The reclaim (:mod:`.reclaim`) moves a dead owner's deliveries with one Lua call, and a solo
worker puts back the unrun rest of a batch (``BatchedQoS.return_undelivered``); both push
exactly what kombu's ``restore_by_tag`` would, computed by kombu's own
``Channel._do_restore_message`` on a recorder: the exchange lookup, the priority sub-list and
the push side stay kombu's.
"""

from __future__ import annotations

from typing import Any

from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads


class _RecordedPushes:
    """Stands in for the pipeline kombu's ``_do_restore_message`` pushes on."""

    def __init__(self) -> None:
        self.pushes: list[tuple[str, str, Any]] = []

    def lpush(self, key: str, value: Any) -> _RecordedPushes:
        self.pushes.append(("LPUSH", key, value))
        return self

    def rpush(self, key: str, value: Any) -> _RecordedPushes:
        self.pushes.append(("RPUSH", key, value))
        return self


#: Where a payload carries kombu's ``redelivered`` mark: its headers and its delivery info.
_MARK = "redelivered"


def _mark_holders(message: dict[str, Any]) -> list[dict[str, Any]]:
    properties = message.get("properties") or {}
    return [d for d in (message.get("headers"), properties.get("delivery_info")) if d is not None]


def restore_pushes(
    channel: Any, record: Any, *, mark_redelivered: bool = True
) -> list[tuple[str, str, Any]]:
    """The pushes kombu's restore makes for an unacked record ``[payload, exchange,
    routing_key]``: kombu's own ``Channel._do_restore_message`` (exchange lookup, priority
    sub-list, push side), its pushes recorded instead of sent.

    Args:
        channel: The kombu Redis channel of the record's unacked hash.
        record: The record, as the unacked hash holds it.
        mark_redelivered: Mark the message ``redelivered``, as kombu does. False leaves the
            marks as they were: for deliveries nobody ran (a batch's rest), which are no
            redelivery and must not cost a result lookup or count towards the poison limit.
    """
    message, exchange, routing_key = loads(bytes_to_str(record))
    before = [(holder, holder.get(_MARK)) for holder in _mark_holders(message)]
    recorder = _RecordedPushes()
    channel._do_restore_message(message, exchange, routing_key, recorder, leftmost=False)
    if mark_redelivered or not recorder.pushes:
        return recorder.pushes
    for holder, value in before:
        if value is None:
            holder.pop(_MARK, None)
        else:
            holder[_MARK] = value
    body = dumps(message)
    return [(command, key, body) for command, key, _ in recorder.pushes]
