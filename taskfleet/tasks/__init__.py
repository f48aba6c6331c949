"""Job kinds. Importing this package loads no job: the job table is data.

:mod:`taskfleet.tasks.table` names every shipped kind and its pool (the client and the router
read it); :mod:`taskfleet.tasks.job_app` is the app the job modules declare their jobs on,
with its middleware; ``taskfleet.app``, the worker's entry point, imports the job modules.
"""

from __future__ import annotations

from taskfleet.tasks.table import JOB_MODULES, JOB_POOLS

__all__ = ["JOB_MODULES", "JOB_POOLS"]
