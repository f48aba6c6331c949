"""The tiered cache: L1 memory, L2 Redis and L3 PostgreSQL behind one interface.

L2 writes behind to L3 through the persistence stream of :mod:`taskfleet.results`, whose
persister lands them in the ``taskfleet_cache`` table.
"""

from __future__ import annotations
