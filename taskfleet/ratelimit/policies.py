"""Rate-limit policies as small values: a token bucket (GCRA), a leaky bucket, a sliding window.

A policy says what is allowed, not where its state lives: the stores
(:mod:`~taskfleet.ratelimit.redis_store`, :mod:`~taskfleet.ratelimit.memory_store`,
:mod:`~taskfleet.ratelimit.window`) apply it. Token and leaky buckets are both the generic
cell rate algorithm (GCRA: one "theoretical arrival time" per key), so several of them are
checked and updated together in one atomic step; they differ in their burst and in how far
ahead a job may book a slot (``queue_s``):

* :class:`TokenBucket` ``(rate, burst)``: up to ``burst`` at once, then ``rate``. In any
  window of T seconds it admits at most ``burst + T * rate``.
* :class:`LeakyBucket` ``(rate, capacity)``: no burst (calls leave evenly spaced), but up to
  ``capacity`` may wait in the bucket: at enqueue, a call is admitted while the bucket has
  room; at execution, a job books the next free slot and is deferred to it. In any window of
  T seconds at most ``capacity + 1 + T * rate`` are admitted.
* :class:`SlidingWindow` ``(rate)``: at most ``count`` in any window of ``period`` seconds
  (the ``limits`` library's moving window).

Specs (settings, ``job(..., rate_limit=...)``): ``"100/s"`` (a token bucket whose burst is
the count), ``"100/s burst=20"``, ``"leaky 100/s capacity=50"``, ``"window 1000/min"``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

#: Seconds per unit of a rate's period.
UNITS: dict[str, float] = {
    **dict.fromkeys(("s", "sec", "second", "seconds"), 1.0),
    **dict.fromkeys(("m", "min", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hour", "hours"), 3600.0),
    **dict.fromkeys(("d", "day", "days"), 86400.0),
}
_RATE = re.compile(r"^\s*(\d+)\s*(?:/|per)\s*(\d*(?:\.\d+)?)\s*([a-z]+)\s*$", re.IGNORECASE)
_OPTION = re.compile(r"^(burst|capacity)=(\d+)$")


@dataclass(frozen=True)
class Rate:
    """``count`` calls per ``period_s`` seconds."""

    count: int
    period_s: float

    def __post_init__(self) -> None:
        if self.count < 1 or self.period_s <= 0:
            raise ValueError(f"a rate needs a count >= 1 and a period > 0, got {self}")

    @property
    def interval(self) -> float:
        """Seconds between two calls at this rate."""
        return self.period_s / self.count

    def __str__(self) -> str:
        return f"{self.count}/{self.period_s:g}s"


def parse_rate(text: str) -> Rate:
    """``"100/s"``, ``"100 per second"``, ``"6000/min"``, ``"5/10s"`` as a :class:`Rate`."""
    match = _RATE.match(text)
    unit = UNITS.get(match.group(3).lower()) if match else None
    if match is None or unit is None:
        raise ValueError(f"not a rate: {text!r} (expected e.g. '100/s', '6000/min', '5/10s')")
    multiple = float(match.group(2)) if match.group(2) else 1.0
    return Rate(int(match.group(1)), multiple * unit)


def _rate(value: Rate | str) -> Rate:
    return value if isinstance(value, Rate) else parse_rate(value)


@dataclass(frozen=True)
class TokenBucket:
    """Up to ``burst`` calls at once (default: the rate's count), refilled at ``rate``."""

    rate: Rate
    burst: int = 0

    def __init__(self, rate: Rate | str, burst: int | None = None) -> None:
        parsed = _rate(rate)
        object.__setattr__(self, "rate", parsed)
        object.__setattr__(self, "burst", parsed.count if burst is None else burst)
        if self.burst < 1:
            raise ValueError(f"burst must be >= 1, got {self.burst}")

    @property
    def tolerance(self) -> float:
        """GCRA's tolerance: how far ahead of the rate a call may be."""
        return (self.burst - 1) * self.rate.interval

    @property
    def queue_s(self) -> float | None:
        """How far ahead a job may book a slot (None: the limiter's ``max_defer``)."""
        return None

    @property
    def max_cost(self) -> int:
        """The largest batch ever admitted at once."""
        return self.burst

    def max_admitted(self, window_s: float) -> int:
        """The most calls admitted in any window of ``window_s`` seconds."""
        return self.burst + math.floor(window_s / self.rate.interval)


@dataclass(frozen=True)
class LeakyBucket:
    """Calls leave evenly spaced at ``rate``; up to ``capacity`` may wait in the bucket."""

    rate: Rate
    capacity: int = 0

    def __init__(self, rate: Rate | str, capacity: int | None = None) -> None:
        parsed = _rate(rate)
        object.__setattr__(self, "rate", parsed)
        object.__setattr__(self, "capacity", parsed.count if capacity is None else capacity)
        if self.capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {self.capacity}")

    tolerance = 0.0

    @property
    def queue_s(self) -> float | None:
        """How far ahead a call may book a slot: the bucket's capacity."""
        return self.capacity * self.rate.interval

    @property
    def max_cost(self) -> int:
        """The largest batch ever admitted at once."""
        return self.capacity + 1

    def max_admitted(self, window_s: float) -> int:
        """The most calls admitted in any window of ``window_s`` seconds."""
        return self.capacity + 1 + math.floor(window_s / self.rate.interval)


@dataclass(frozen=True)
class SlidingWindow:
    """At most ``rate.count`` calls in any window of ``rate.period_s`` seconds."""

    rate: Rate

    def __init__(self, rate: Rate | str) -> None:
        object.__setattr__(self, "rate", _rate(rate))

    @property
    def max_cost(self) -> int:
        """The largest batch ever admitted at once."""
        return self.rate.count

    def max_admitted(self, window_s: float) -> int:
        """The most calls admitted in any window of ``window_s`` seconds."""
        return self.rate.count * math.ceil(window_s / self.rate.period_s)


#: A GCRA policy (checked atomically with others), or a sliding window.
Gcra = TokenBucket | LeakyBucket
Policy = TokenBucket | LeakyBucket | SlidingWindow


def policy_from_spec(spec: Policy | str) -> Policy:
    """A policy from a spec string (see the module docstring), or the policy itself."""
    if not isinstance(spec, str):
        return spec
    words = spec.split()
    algorithm = words.pop(0).lower() if words and words[0].lower() in _ALGORITHMS else "token"
    options = [_OPTION.match(w) for w in words if "=" in w]
    rate = " ".join(w for w in words if "=" not in w)
    if any(o is None for o in options):
        raise ValueError(f"bad option in rate limit {spec!r} (burst=N or capacity=N)")
    size = {o.group(1): int(o.group(2)) for o in options if o is not None}
    if algorithm == "window":
        if size:
            raise ValueError(f"a sliding window takes no burst or capacity: {spec!r}")
        return SlidingWindow(rate)
    if algorithm == "leaky":
        return LeakyBucket(rate, size.get("capacity", size.get("burst")))
    return TokenBucket(rate, size.get("burst", size.get("capacity")))


_ALGORITHMS = frozenset({"token", "leaky", "window"})
