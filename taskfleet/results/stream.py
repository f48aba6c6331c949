"""The persistence stream's contract: its name, its consumer group and the entries on it.

Writers append in the same Lua call that writes Redis, so an entry exists exactly when its
Redis write does: the result backend (:mod:`taskfleet.results.backend`) for every result,
and the cache's L2 tier (:mod:`taskfleet.cache.l2`) for L3 write-behind. The persister
(:mod:`taskfleet.results.persister`) reads them in a consumer group and lands them in
Postgres. Two entry shapes, told apart by :data:`TABLE_FIELD`:

* a **result**: ``key`` (``celery-task-meta-<id>``), ``value`` (Celery's JSON meta) and
  ``expires`` (the Postgres retention in seconds);
* a **cache write**: ``table`` = :data:`CACHE_TABLE`, ``op`` (``set``, ``del`` or
  ``delpat``), ``key``, ``value`` (``set`` only), ``expires`` (the L3 TTL) and, once
  re-queued from the quarantine, ``version`` (the entry id of its first append).

A leaf module (no imports), so a writer does not load the persister, and with it SQLAlchemy,
for a name.
"""

from __future__ import annotations

#: The Redis stream of results (and L3 write-behind entries) waiting for Postgres.
PERSIST_STREAM = "taskfleet:results:persist"
#: The consumer group of the persister processes that drain it.
PERSIST_GROUP = "taskfleet-persisters"
#: The field that marks a cache write; a result entry has no such field.
TABLE_FIELD = "table"
#: Its value on a cache write (the ``taskfleet_cache`` table, L3).
CACHE_TABLE = "cache"
#: One entry as redis-py returns it: (entry id, {field: value}).
StreamEntry = tuple[bytes, dict[bytes, bytes]]
