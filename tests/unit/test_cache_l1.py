"""L1 memory tier: eviction policies, byte sizing, expiry, patterns, value checks, settings."""

from __future__ import annotations

import pytest

from taskfleet.cache.factory import open_cache
from taskfleet.cache.l1 import MemoryTier
from taskfleet.cache.tiers import (
    InvalidKey,
    NotSerializable,
    ValueTooLarge,
    compile_glob,
    encode,
    glob_escape,
)
from taskfleet.config.cache import load_cache_settings
from taskfleet.config.settings import ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fill(tier: MemoryTier, *keys: str) -> None:
    tier.set_many({k: f'"{k}"' for k in keys})


def test_lru_evicts_least_recently_used() -> None:
    tier = MemoryTier(policy="lru", max_entries=2)
    fill(tier, "a", "b")
    assert tier.get_text("a") == '"a"'
    fill(tier, "c")
    assert set(tier.get_many(["a", "b", "c"])) == {"a", "c"}
    assert tier.stats.evictions == 1


def test_lfu_evicts_least_frequently_used() -> None:
    tier = MemoryTier(policy="lfu", max_entries=2)
    fill(tier, "a", "b")
    for _ in range(3):
        tier.get_text("b")
    tier.get_text("a")
    fill(tier, "c")
    assert set(tier.get_many(["a", "b", "c"])) == {"b", "c"}


def test_fifo_evicts_first_in_even_if_recently_read() -> None:
    tier = MemoryTier(policy="fifo", max_entries=2)
    fill(tier, "a", "b")
    tier.get_text("a")
    fill(tier, "c")
    assert set(tier.get_many(["a", "b", "c"])) == {"b", "c"}


@pytest.mark.parametrize("policy", ["lru", "ttl", "fifo"])
def test_entries_expire_after_ttl(policy: str) -> None:
    clock = Clock()
    tier = MemoryTier(policy=policy, max_entries=10, ttl=5.0, timer=clock)  # type: ignore[arg-type]
    fill(tier, "a")
    clock.now += 4.9
    assert tier.get_text("a") == '"a"'
    clock.now += 0.2
    assert tier.get_text("a") is None


def test_byte_bound_counts_encoded_size() -> None:
    tier = MemoryTier(policy="lru", max_bytes=1000)
    big = '"' + "x" * 400 + '"'
    tier.set_many({"a": big, "b": big})
    tier.set_many({"c": big})
    assert len(tier) == 2
    assert tier.size <= 1000
    tier.set_many({"huge": '"' + "y" * 5000 + '"'})  # larger than the tier: not kept
    assert tier.get_text("huge") is None
    assert len(tier) == 2


def test_pattern_delete_and_literal_keys_with_glob_characters() -> None:
    tier = MemoryTier()
    fill(tier, "contract:1", "contract:2", "contract:*", "other:1", "a[b]?")
    assert tier.delete(["contract:*"]) == 1  # literal: only the key named so
    assert tier.get_text("contract:1") == '"contract:1"'
    assert tier.delete_pattern("contract:*") == 2
    assert tier.delete_pattern(glob_escape("a[b]?")) == 1
    assert set(tier.get_many(["other:1", "contract:1"])) == {"other:1"}


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [
        ("c:[0-2]x", ["c:1x"], ["c:3x", "c:x"]),
        ("c:[^a]", ["c:b"], ["c:a"]),
        ("h?llo", ["hello"], ["hllo"]),
        ("lit\\*", ["lit*"], ["litx"]),
        ("a.b*", ["a.bc"], ["axbc"]),
    ],
)
def test_glob_translation(pattern: str, yes: list[str], no: list[str]) -> None:
    regex = compile_glob(pattern)
    assert all(regex.match(k) for k in yes)
    assert not any(regex.match(k) for k in no)


def test_bad_values_and_keys_are_refused() -> None:
    with pytest.raises(NotSerializable):
        encode({1, 2}, 100)
    with pytest.raises(NotSerializable):
        encode(float("nan"), 100)
    with pytest.raises(ValueTooLarge, match="over the 100-byte cap"):
        encode("x" * 200, 100)
    cache = open_cache(["memory://?max_entries=5"])
    with pytest.raises(InvalidKey):
        cache.set("", 1)
    with pytest.raises(NotSerializable):
        cache.set("k", object())
    assert cache.get("k") is None


def test_memory_only_cache_reports_stats() -> None:
    cache = open_cache(["memory://?policy=lfu&max_entries=2"])
    cache.set_many({"a": 1, "b": 2, "c": 3})
    assert cache.get("c") == 3
    assert cache.get("zz") is None
    stats = cache.stats()["l1"]
    assert stats["hits"] == 1
    assert stats["misses"] == 1
    assert stats["evictions"] == 1


def test_settings_errors_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKFLEET_CACHE_L1_POLICY", "random")
    with pytest.raises(ConfigError, match="TASKFLEET_CACHE_L1_POLICY"):
        load_cache_settings()
    monkeypatch.delenv("TASKFLEET_CACHE_L1_POLICY")
    with pytest.raises(ConfigError, match="TASKFLEET_CACHE_L1_MAX_BYTES"):
        load_cache_settings(l1_max_bytes=2048, max_value_bytes=4096)
    with pytest.raises(ConfigError, match="TASKFLEET_CACHE_NAMESPACE"):
        load_cache_settings(namespace="a*b")
    with pytest.raises(ValueError, match="unknown cache URL scheme"):
        open_cache(["memcached://x"])
