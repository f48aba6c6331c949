"""Result key -> logical shard, by a stable hash (the same in every process and release).

CRC-32 (zlib, in C) of the key's UTF-8 bytes, modulo the number of logical shards. Python's
``hash()`` is salted per process, so it is never used here. The number of logical shards is
fixed for the life of a deployment: physical shards are added by moving logical ones.
"""

from __future__ import annotations

import zlib

#: Logical shards: many more than physical ones, so a placement moves in small units.
LOGICAL_SHARDS = 256


def logical_shard(key: str, count: int = LOGICAL_SHARDS) -> int:
    """The logical shard of ``key`` (0 <= result < ``count``)."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % count
