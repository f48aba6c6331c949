"""What the GCRA stores share: one call's arguments, its verdict, the protocol.

A call checks several GCRA policies at once (a kind's and a client's), each under its own
key, and charges all or none of them. It may book a slot up to ``horizon`` seconds ahead
(a deferred job runs in its slot without being charged again), and bumps the counters
named in its :class:`Tally`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple, Protocol

from taskfleet.ratelimit.policies import Gcra

#: Verdicts: admitted now, admitted on a slot booked ``wait`` seconds ahead, refused
#: (admissible in ``wait`` seconds), admitted on a slot booked by an earlier call.
ALLOWED, RESERVED, REFUSED, ON_SLOT = 0, 1, 2, 3
#: Seconds a booked slot outlives its time (a late worker still finds it).
SLOT_GRACE_S = 300.0
#: A booked slot missed by more than this (seconds) is dropped and the call checked afresh.
SLOT_LATE_S = 0.1
#: Key prefix of everything the rate limits keep in Redis.
KEY_PREFIX = "taskfleet:limits:"
#: Sorted set of counter hashes, by when each first counted (``limits status``).
INDEX_KEY = KEY_PREFIX + "index"
#: Counter hashes the index lists (the oldest beyond this are dropped).
TALLY_CAP = 10_000


class Verdict(NamedTuple):
    """The outcome of one call (see the constants) and its wait in seconds."""

    outcome: int
    wait: float = 0.0
    #: Whether the call's ``push`` was published with it (Redis store, admitted).
    pushed: bool = False

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


@dataclass(frozen=True, eq=False)
class GcraCall:
    """One atomic check of ``policies`` (state under ``keys``), without its cost.

    The same call is reused for every check of the same limits (a client's, at enqueue):
    what does not change between checks is derived once (:attr:`redis_args`).

    Attributes:
        horizon: How far ahead (seconds) the call may book a slot; 0 books none.
        slot_key: Where a booking is recorded (and found by the job's next run); "" for none.
        late_s: How late a booked slot may still be used.
    """

    keys: Sequence[str]
    policies: Sequence[Gcra]
    horizon: float = 0.0
    slot_key: str = ""
    tally: Tally = field(default_factory=Tally)
    late_s: float = SLOT_LATE_S

    @cached_property
    def redis_args(self) -> tuple[list[bytes], list[bytes]]:
        """``gcra.lua``'s KEYS and ARGV after ``now`` and ``cost``, for this call, encoded
        once (the Redis client sends bytes as they are)."""
        tally = self.tally
        keys = [*self.keys, self.slot_key, INDEX_KEY, *tally.keys]
        argv: list[object] = [
            repr(self.horizon),
            len(self.keys),
            SLOT_GRACE_S,
            tally.ttl_s,
            TALLY_CAP,
            tally.allowed,
            tally.reserved,
            tally.refused,
            repr(self.late_s),
            len(tally.keys),
        ]
        for policy in self.policies:
            argv += [repr(policy.rate.interval), repr(policy.tolerance)]
        return [k.encode() for k in keys], [str(a).encode() for a in argv]


class GcraStore(Protocol):
    """Applies GCRA calls atomically. Raises only ``LimitStorageError`` when unreachable
    (a call with a ``push`` raises the broker's own error instead)."""

    def acquire(
        self,
        call: GcraCall,
        now: float,
        cost: int = 1,
        push: Sequence[tuple[str, Sequence[bytes | str]]] = (),
    ) -> Verdict:
        """Check and charge ``call`` for ``cost`` units at time ``now`` (seconds).

        Args:
            push: Envelopes to push if admitted, as ``(list, values)`` LPUSHes, in the same
                atomic step (a store that cannot leaves ``Verdict.pushed`` False: the caller
                publishes them).
        """
        ...

    def counters(self, key: str) -> dict[str, int]:
        """The counters kept under a tally key."""
        ...

    def tallies(self, prefix: str) -> list[str]:
        """Tally keys starting with ``prefix``, most recent first."""
        ...
