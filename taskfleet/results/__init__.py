"""The result leg: from a job's return value to its row in PostgreSQL.

``backend`` (Celery's result backend) writes each result to Redis and appends it to the
persistence stream in one Lua call (``stream`` is the stream's contract); ``pipelining`` and
``late_replies`` let a pool process send that write without waiting for Redis's answer.
``persister`` drains the stream in batches: ``batch`` decodes them, ``landing`` upserts them
through ``store`` (the durable tables), bisecting around rows Postgres refuses
(``pgerrors``), which go to the ``quarantine``; ``backlog`` watches the stream's length and
age. ``cli`` is ``taskfleet results status|quarantine``.
"""

from __future__ import annotations
