"""taskfleet: background jobs at scale on Celery.

The producer API lives in :mod:`taskfleet.client`; the Celery app in :mod:`taskfleet.app`.
"""

from __future__ import annotations

__version__ = "0.1.0"
