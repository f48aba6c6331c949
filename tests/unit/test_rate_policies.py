"""Rate-limit policies and the GCRA algorithm, on the in-process store with an injected clock."""

from __future__ import annotations

import random

import pytest

from taskfleet.config.limits import load_limit_settings
from taskfleet.config.settings import ConfigError
from taskfleet.ratelimit.errors import LimitStorageError
from taskfleet.ratelimit.limiter import Limit, Limiter
from taskfleet.ratelimit.memory_store import MemoryGcraStore
from taskfleet.ratelimit.policies import (
    LeakyBucket,
    Rate,
    SlidingWindow,
    TokenBucket,
    parse_rate,
    policy_from_spec,
)
from taskfleet.ratelimit.store_base import ALLOWED, ON_SLOT, REFUSED, RESERVED, GcraCall, Verdict

START = 1_000_000.0


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, **kwargs: object) -> Limiter:
    return Limiter("memory://", clock=clock, **kwargs)  # type: ignore[arg-type]


def test_rates_and_specs_parse() -> None:
    assert parse_rate("100/s") == Rate(100, 1.0)
    assert parse_rate("100 per second") == Rate(100, 1.0)
    assert parse_rate("6000/min") == Rate(6000, 60.0)
    assert parse_rate("5/10s") == Rate(5, 10.0)
    assert policy_from_spec("100/s") == TokenBucket("100/s", burst=100)
    assert policy_from_spec("100/s burst=20") == TokenBucket("100/s", burst=20)
    assert policy_from_spec("leaky 10/s capacity=5") == LeakyBucket("10/s", capacity=5)
    assert policy_from_spec("window 1000/min") == SlidingWindow("1000/min")
    for bad in ("100", "0/s", "10/fortnight", "100/s burst=x", "window 5/s burst=2"):
        with pytest.raises(ValueError, match=r"rate|burst|count|option|window"):
            policy_from_spec(bad)


def test_settings_refuse_a_bad_client_table() -> None:
    with pytest.raises(ConfigError, match="TASKFLEET_LIMITS_ENQUEUE"):
        load_limit_settings(enqueue={"acme": "lots"})


def test_token_bucket_bursts_then_refuses_with_exact_retry_after() -> None:
    clock = Clock()
    lim = limiter(clock)
    limits = [Limit("client:a", TokenBucket("10/s", burst=3))]
    assert [lim.check(limits).outcome for _ in range(3)] == [ALLOWED] * 3
    refused = lim.check(limits)
    assert refused.outcome == REFUSED
    assert refused.wait == pytest.approx(0.1)
    clock.now += 0.1
    assert lim.check(limits).outcome == ALLOWED
    assert lim.check(limits).outcome == REFUSED


def test_token_bucket_never_admits_more_than_its_bound() -> None:
    """Random arrivals for 10 simulated seconds: admitted <= burst + T * rate, and close to it."""
    clock = Clock()
    lim = limiter(clock)
    policy = TokenBucket("50/s", burst=10)
    limits = [Limit("client:b", policy)]
    rng = random.Random(7)
    admitted = 0
    while clock.now < START + 10.0:
        clock.now += rng.expovariate(500)  # ten times the rate
        admitted += lim.check(limits).admitted
    assert policy.max_admitted(10.0) - 5 <= admitted <= policy.max_admitted(10.0)


def test_a_batch_is_charged_whole_or_not_at_all() -> None:
    clock = Clock()
    lim = limiter(clock)
    limits = [Limit("client:c", TokenBucket("10/s", burst=5))]
    assert lim.check(limits, cost=4).outcome == ALLOWED
    refused = lim.check(limits, cost=3)  # 1 left: refused, nothing charged
    assert refused.outcome == REFUSED
    assert refused.wait == pytest.approx(0.2)
    assert lim.check(limits, cost=1).outcome == ALLOWED


def test_two_limits_are_charged_together_or_not_at_all() -> None:
    clock = Clock()
    lim = limiter(clock)
    kind = Limit("kind:k", TokenBucket("100/s", burst=100))
    tight = Limit("client:d", TokenBucket("1/s", burst=1))
    assert lim.check([kind, tight]).outcome == ALLOWED
    assert lim.check([kind, tight]).outcome == REFUSED
    # The refused call charged nothing on the kind's bucket: 99 more fit in it.
    assert sum(lim.check([kind]).admitted for _ in range(100)) == 99


def test_leaky_bucket_books_evenly_spaced_slots_and_a_slot_is_used_once() -> None:
    clock = Clock()
    lim = limiter(clock)
    limits = [Limit("kind:l", LeakyBucket("10/s", capacity=2))]
    verdicts = [lim.check(limits, context="execution", slot_key=f"slot:{i}") for i in range(4)]
    assert [v.outcome for v in verdicts] == [ALLOWED, RESERVED, RESERVED, REFUSED]
    assert [round(v.wait, 6) for v in verdicts[1:3]] == [0.1, 0.2]
    clock.now += 0.1
    assert lim.check(limits, context="execution", slot_key="slot:1").outcome == ON_SLOT
    # A slot is spent once: the same job asking again books a new one, after slot 3's.
    again = lim.check(limits, context="execution", slot_key="slot:1")
    assert again.outcome == RESERVED
    assert again.wait == pytest.approx(0.2)


def test_execution_books_up_to_the_horizon_then_refuses() -> None:
    clock = Clock()
    lim = limiter(clock)
    limits = [Limit("kind:m", TokenBucket("2/s", burst=1))]
    outcomes = [lim.check(limits, context="execution", horizon=1.0).outcome for _ in range(5)]
    assert outcomes == [ALLOWED, RESERVED, RESERVED, REFUSED, REFUSED]


def test_counters_per_scope() -> None:
    clock = Clock()
    lim = limiter(clock)
    limits = [Limit("client:e", TokenBucket("1/s", burst=1))]
    lim.check(limits)
    lim.check(limits)
    lim.check(limits, context="execution", horizon=5.0)
    assert lim.store.counters("taskfleet:limits:stats:client:e") == {
        "allowed": 1,
        "refused": 1,
        "started": 1,
    }


def test_idle_state_expires_by_itself() -> None:
    clock = Clock()
    store = MemoryGcraStore()
    policy = TokenBucket("10/s", burst=10)
    for i in range(10_001):
        store.acquire(GcraCall([f"k{i}"], [policy]), clock.now)
    clock.now += 0.2  # every bucket is full again: its state says nothing
    store.acquire(GcraCall(["fresh"], [policy]), clock.now)
    assert len(store) == 1


class DownStore:
    """A store whose backend is unreachable."""

    def acquire(self, call: GcraCall, now: float, cost: int = 1, push: object = ()) -> Verdict:
        raise LimitStorageError("down")

    def counters(self, key: str) -> dict[str, int]:
        return {}

    def tallies(self, prefix: str) -> list[str]:
        return []


@pytest.mark.parametrize(
    ("fallback", "expected"),
    [("allow", [ALLOWED] * 3), ("deny", [REFUSED] * 3), ("local", [ALLOWED, ALLOWED, REFUSED])],
)
def test_storage_down_follows_the_configured_fallback(fallback: str, expected: list[int]) -> None:
    clock = Clock()
    lim = Limiter("memory://", clock=clock, store=DownStore(), fallback=fallback)  # type: ignore[arg-type]
    limits = [Limit("client:f", TokenBucket("1/s", burst=2))]
    verdicts = [lim.check(limits) for _ in range(3)]
    assert [v.outcome for v in verdicts] == expected
    if fallback == "deny":
        assert verdicts[0].wait == lim.deny_retry_after


def test_a_slot_missed_by_more_than_the_grace_is_booked_afresh() -> None:
    clock = Clock()
    lim = limiter(clock)
    limits = [Limit("kind:n", TokenBucket("10/s", burst=1))]
    assert lim.check(limits, context="execution", horizon=5.0).outcome == ALLOWED
    booked = lim.check(limits, context="execution", horizon=5.0, slot_key="slot:late")
    assert booked.outcome == RESERVED
    clock.now += booked.wait + 0.5  # the worker ran it half a second late
    again = lim.check(limits, context="execution", horizon=5.0, slot_key="slot:late")
    assert again.outcome == ALLOWED  # checked afresh (the bucket has room again), not on its slot
