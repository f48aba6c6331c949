"""What the autoscaler measures and decides: plain, JSON-friendly value objects."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Action = Literal["grow", "shrink", "hold"]


@dataclass(frozen=True)
class WorkerView:
    """One live worker of a pool, as it answered this tick."""

    hostname: str
    concurrency: int
    pid: int = 0
    prefork: bool = True
    #: False for a solo worker: one process, which no remote control can grow or shrink.
    resizable: bool = True
    #: A slot group (``taskfleet.scheduler.slots``): solo workers its supervisor starts and
    #: stops; ``hostname`` is the group's id and ``concurrency`` its process count.
    slots: bool = False


@dataclass(frozen=True)
class PoolSample:
    """One tick's measurement of a pool."""

    pool: str
    at: float
    depth: int
    in_flight: int
    arrival_rate: float
    completion_rate: float
    workers: tuple[WorkerView, ...]
    #: When depth and in-flight were read: after the tick's inspect round trips, so up to a
    #: few inspect timeouts after ``at`` (None: at ``at``). The rates are between such moments.
    measured_at: float | None = None

    @property
    def concurrency(self) -> int:
        """Processes (or greenlets) the pool runs now."""
        return sum(w.concurrency for w in self.workers)

    @property
    def backlog(self) -> int:
        """Jobs waiting or running."""
        return self.depth + self.in_flight

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form for the decision log."""
        data = asdict(self)
        data["workers"] = {w.hostname: w.concurrency for w in self.workers}
        return data


@dataclass(frozen=True)
class TrendPoint:
    """A past sample of a pool, kept for the predictive part."""

    at: float
    depth: int
    arrival_rate: float


@dataclass
class PoolMemory:
    """What the policy remembers about a pool between ticks."""

    last_up_at: float | None = None
    last_down_at: float | None = None
    trend: list[TrendPoint] = field(default_factory=list)


@dataclass(frozen=True)
class Decision:
    """What the policy will do to a pool, and why."""

    pool: str
    action: Action
    current: int
    target: int
    changes: dict[str, int]
    desired_replicas: int
    reason: str
    wanted: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form for the decision log."""
        return asdict(self)
