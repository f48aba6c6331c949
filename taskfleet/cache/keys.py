"""The names both ends of the persistence stream share: the workers' result backend and the
L2 tier append to it, the persister consumes it.

A leaf module (no imports), so the writers need not import the persister, and with it
SQLAlchemy and L3, just for a string.
"""

from __future__ import annotations

#: The Redis stream of results (and L3 write-behind entries) waiting for Postgres.
PERSIST_STREAM = "taskfleet:results:persist"
#: The consumer group of the persister processes that drain it.
PERSIST_GROUP = "taskfleet-persisters"
