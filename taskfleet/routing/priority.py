"""One priority meaning on every broker: 0..9, where 9 is the most urgent.

RabbitMQ already orders that way (``x-max-priority``); on Redis both of taskfleet's
transports (``taskfleet.routing.transport`` and, with ``TASKFLEET_FAST_TRANSPORT=false``,
``taskfleet.routing.stock_transport``) consume the priority sub-lists from 9 down to 0, so
a message carries the same number on both brokers, including from bare ``send_task`` callers.
A message with no priority is 0, the least urgent: it never jumps the queue.
"""

from __future__ import annotations

MIN_PRIORITY = 0
MAX_PRIORITY = 9
PRIORITY_LEVELS: dict[str, int] = {"low": 2, "normal": 5, "high": 7, "critical": 9}
DEFAULT_PRIORITY = PRIORITY_LEVELS["normal"]
#: Redis keeps one sub-list per priority (kombu's ``priority_steps``): all ten of them.
ALL_PRIORITY_STEPS = list(range(MIN_PRIORITY, MAX_PRIORITY + 1))

Priority = int | str


class PriorityError(ValueError):
    """A priority outside 0..9 or an unknown level name."""


def parse_priority(value: Priority | None) -> int:
    """Turn an int 0..9 or a level name (low, normal, high, critical) into 0..9."""
    if value is None:
        return DEFAULT_PRIORITY
    if isinstance(value, bool):
        raise PriorityError(f"priority must be an int 0..9 or a level name, got {value!r}")
    if isinstance(value, str):
        level = PRIORITY_LEVELS.get(value.strip().lower())
        if level is None:
            if value.strip().isdigit():
                return parse_priority(int(value))
            names = ", ".join(PRIORITY_LEVELS)
            raise PriorityError(f"unknown priority level {value!r}; use 0..9 or one of {names}")
        return level
    if not isinstance(value, int) or not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise PriorityError(
            f"priority must be between {MIN_PRIORITY} and {MAX_PRIORITY} "
            f"(9 is the most urgent), got {value!r}"
        )
    return value
