"""What the GCRA stores share: one call's arguments, its verdict, the protocol.

A call checks several GCRA policies at once (a kind's and a client's), each under its own
key, and charges all or none of them. It may book a slot up to ``horizon`` seconds ahead
(a deferred job runs in its slot without being charged again), and bumps the counters
named in its :class:`Tally`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from taskfleet.ratelimit.policies import Gcra

#: Verdicts: admitted now, admitted on a slot booked ``wait`` seconds ahead, refused
#: (admissible in ``wait`` seconds), admitted on a slot booked by an earlier call.
ALLOWED, RESERVED, REFUSED, ON_SLOT = 0, 1, 2, 3
#: Seconds a booked slot outlives its time (a late worker still finds it).
SLOT_GRACE_S = 300.0
#: A booked slot missed by more than this (seconds) is dropped and the call checked afresh.
SLOT_LATE_S = 0.1
#: Counter hashes the index lists (the least recently bumped beyond this are dropped).
TALLY_CAP = 10_000


class Verdict(NamedTuple):
    """The outcome of one call (see the constants) and its wait in seconds."""

    outcome: int
    wait: float = 0.0

    @property
    def admitted(self) -> bool:
        """Whether the call may go ahead now (``RESERVED``: at its booked slot)."""
        return self.outcome != REFUSED


@dataclass(frozen=True)
class Tally:
    """Counters one call bumps: a hash per scope, and the field per verdict."""

    keys: Sequence[str] = ()
    allowed: str = "allowed"
    reserved: str = "allowed"
    refused: str = "refused"
    ttl_s: int = 7 * 24 * 3600


@dataclass(frozen=True)
class GcraCall:
    """One atomic check of ``policies`` (state under ``keys``) for ``cost`` units.

    Attributes:
        horizon: How far ahead (seconds) the call may book a slot; 0 books none.
        slot_key: Where a booking is recorded (and found by the job's next run); "" for none.
        late_s: How late a booked slot may still be used.
    """

    keys: Sequence[str]
    policies: Sequence[Gcra]
    cost: int = 1
    horizon: float = 0.0
    slot_key: str = ""
    tally: Tally = field(default_factory=Tally)
    late_s: float = SLOT_LATE_S


class GcraStore(Protocol):
    """Applies GCRA calls atomically. Raises only ``LimitStorageError`` when unreachable."""

    def acquire(self, call: GcraCall, now: float) -> Verdict:
        """Check and charge ``call`` at time ``now`` (seconds)."""
        ...

    def counters(self, key: str) -> dict[str, int]:
        """The counters kept under a tally key."""
        ...

    def tallies(self, prefix: str) -> list[str]:
        """Tally keys starting with ``prefix``, most recently bumped first."""
        ...
