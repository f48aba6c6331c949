"""What every cache tier shares: the interface, value encoding, key rules, glob patterns."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from taskfleet.cache.stats import TierStats

MAX_KEY_CHARS = 512
#: Redis glob syntax: ``*``, ``?``, ``[...]`` (``[^...]`` negates) and ``\\`` escapes.
_GLOB_SPECIAL = frozenset("*?[\\")


class CacheError(RuntimeError):
    """Base of every error the cache raises on purpose."""


class NotSerializable(CacheError, TypeError):
    """The value cannot be stored as JSON."""


class ValueTooLarge(CacheError, ValueError):
    """The encoded value is over the configured cap (``TASKFLEET_CACHE_MAX_VALUE_BYTES``)."""


class InvalidKey(CacheError, ValueError):
    """The key is empty, too long or not a string."""


class CacheUnavailable(CacheError):
    """A write could not be made durable (Redis down): nothing was acknowledged."""


def check_key(key: object) -> str:
    """Return ``key`` if it is usable; keys are literal (glob characters carry no meaning).

    Raises:
        InvalidKey: not a non-empty str of at most MAX_KEY_CHARS characters without NUL.
    """
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS or "\x00" in key:
        raise InvalidKey(f"cache keys are non-empty str up to {MAX_KEY_CHARS} chars: {key!r}")
    return key


def encode(value: Any, max_bytes: int) -> str:
    """Canonical JSON text of ``value`` (no NaN/Infinity: Postgres JSONB refuses them).

    Raises:
        NotSerializable: the value is not JSON (sets, bytes, objects, NaN...).
        ValueTooLarge: the text is over ``max_bytes`` bytes.
    """
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise NotSerializable(f"cache values must be JSON-serialisable: {exc}") from None
    size = len(text.encode())
    if size > max_bytes:
        raise ValueTooLarge(f"encoded value is {size} bytes, over the {max_bytes}-byte cap")
    return text


def decode(text: str | bytes) -> Any:
    """The value of stored JSON text."""
    return json.loads(text)


def glob_regex(pattern: str) -> str:
    """A regular expression (valid in Python and PostgreSQL) matching Redis glob ``pattern``.

    Hand-written: ``fnmatch`` has no backslash escape, and the same translation must run in
    Postgres (``key ~ regex``) and Redis (``SCAN MATCH``) so every tier agrees.
    """
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(_literal(pattern[i + 1]))
            i += 2
            continue
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end]
            negate = body.startswith("^")
            body = body[1:] if negate else body
            parts = [
                f"{_literal(body[j])}-{_literal(body[j + 2])}"
                if j + 2 < len(body) and body[j + 1] == "-"
                else _literal(body[j])
                for j in _class_starts(body)
            ]
            out.append(("[^" if negate else "[") + "".join(parts) + "]")
            i = end
        else:
            out.append(_literal(ch))
        i += 1
    return "^" + "".join(out) + "$"


def _class_starts(body: str) -> Iterable[int]:
    j = 0
    while j < len(body):
        yield j
        j += 3 if j + 2 < len(body) and body[j + 1] == "-" else 1


def _literal(ch: str) -> str:
    return ch if ch.isalnum() or ch == "_" else "\\" + ch if ch.isascii() else ch


def glob_escape(text: str) -> str:
    """``text`` as a Redis glob that matches only itself."""
    return "".join("\\" + ch if ch in _GLOB_SPECIAL or ch == "]" else ch for ch in text)


def compile_glob(pattern: str) -> re.Pattern[str]:
    """The compiled :func:`glob_regex` of ``pattern``."""
    return re.compile(glob_regex(pattern), re.DOTALL)


class Tier(Protocol):
    """One storage level; values cross it as JSON text, already encoded and size-checked."""

    name: str
    stats: TierStats

    def get_many(self, keys: list[str]) -> dict[str, str]:
        """The stored text of each present key."""

    def set_many(self, items: Mapping[str, str]) -> None:
        """Store each key's text."""

    def delete(self, keys: list[str]) -> int:
        """Remove keys (literally); return how many existed (if known)."""

    def delete_pattern(self, pattern: str) -> int:
        """Remove every key matching a Redis-style glob."""

    def clear(self) -> None:
        """Remove everything this tier holds for this cache."""
