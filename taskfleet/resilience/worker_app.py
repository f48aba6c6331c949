"""The taskfleet app with the resilience middleware and the ``diag.*`` jobs installed.

``celery -A taskfleet.resilience.worker_app worker`` runs exactly ``taskfleet.app`` plus this
package, whether or not the app already installs ``MIDDLEWARE_CLASSES``/``JOB_MODULES``
(installing twice is a no-op).
"""

from __future__ import annotations

import taskfleet.resilience.testing_jobs  # noqa: F401 - installs the middleware, declares diag.*
from taskfleet.app import app

__all__ = ["app"]
