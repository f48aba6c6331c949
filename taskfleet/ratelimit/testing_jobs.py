"""Diagnostic jobs for rate limits at execution: ``diag.limited`` (its kind limited fleet-wide)
and ``diag.sender`` (answers with the client id its message carried, after any deferral).

Each appends the time it ran to the Redis list ``rate_log_key(payload["log"])`` when the
payload names one (under the diagnostic jobs' prefix, expiring like their other keys), so a
test reads the fleet's observed rate without relying on result timing.
"""

from __future__ import annotations

import time
from typing import Any

from celery import current_task

from taskfleet.publishing.base import CLIENT_HEADER
from taskfleet.ratelimit.policies import TokenBucket
from taskfleet.resilience.diag_keys import DIAG_KEY_TTL_S, rate_log_key
from taskfleet.resilience.runtime import runtime
from taskfleet.tasks.base import job
from taskfleet.tasks.job_app import app

#: ``diag.limited``'s limit: 50 a second fleet-wide, a burst of 5.
DIAG_LIMIT = TokenBucket("50/s", burst=5)


def _log(payload: Any) -> None:
    """Append the time to ``payload["log"]`` (nothing if the payload names no log)."""
    name = payload.get("log") if isinstance(payload, dict) else None
    if name:
        key = rate_log_key(str(name))
        pipe = runtime().redis.pipeline(transaction=False)
        pipe.rpush(key, repr(time.time()))
        pipe.expire(key, DIAG_KEY_TTL_S)
        pipe.execute()


@job(app, "diag.limited", "cpu", rate_limit=DIAG_LIMIT)
def limited(payload: Any = None) -> Any:
    """Log the time it ran; return the payload's ``n``."""
    _log(payload)
    return payload.get("n") if isinstance(payload, dict) else None


@job(app, "diag.sender", "cpu")
def sender(payload: Any = None) -> Any:
    """Log the time it ran; return the client id of the message that ran it."""
    _log(payload)
    return getattr(current_task.request, CLIENT_HEADER, None)
