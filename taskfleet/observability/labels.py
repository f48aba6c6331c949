"""Bounded label values: job kinds from the job table, states, pools.

A label value is never a job id, a client id or any other unbounded text: a kind not in
the job table (:data:`~taskfleet.tasks.table.JOB_POOLS`) is counted as :data:`OTHER_KIND`,
so a producer sending made-up names cannot grow the series.
"""

from __future__ import annotations

from typing import Final

from taskfleet.tasks.table import JOB_POOLS

#: The kind label of every job whose kind is not in the job table.
OTHER_KIND: Final = "other"
#: Celery's final task states -> the ``state`` label (anything else is ``other``).
STATE_LABELS: Final[dict[str, str]] = {
    "SUCCESS": "succeeded",
    "FAILURE": "failed",
    "RETRY": "retried",
    "IGNORED": "ignored",
    "REJECTED": "rejected",
}
OTHER_STATE: Final = "other"


def kind_label(kind: str | None) -> str:
    """``kind`` when the job table lists it, else :data:`OTHER_KIND`."""
    return kind if kind is not None and kind in JOB_POOLS else OTHER_KIND


def state_label(state: str | None) -> str:
    """The ``state`` label of a Celery state."""
    return STATE_LABELS.get(state or "", OTHER_STATE)


def kind_labels() -> tuple[str, ...]:
    """Every value the ``kind`` label can take."""
    return (*JOB_POOLS, OTHER_KIND)
