"""The Redis keys of the diagnostic jobs (``diag.*``), all under :data:`DIAG_PREFIX`.

A payload names only the part after a key's prefix (``{"counter": "t:1"}`` counts under
``taskfleet:diag:counter:t:1``), so no payload reaches a key of the rest of the fleet (the
autoscaler's lock, a queue, a result), and every key a job writes expires
(:data:`DIAG_KEY_TTL_S` after its last write). Tests and the chaos harness read the keys
through these functions; importing this module declares no job.
"""

from __future__ import annotations

#: Every key of the diagnostic jobs starts with this.
DIAG_PREFIX = "taskfleet:diag:"
#: Call counters (``payload["counter"]``).
COUNTER_PREFIX = DIAG_PREFIX + "counter:"
#: The stand-in dependency's down switches (``payload["down_key"]``), and the suffix of their
#: hit counters.
DOWN_PREFIX = DIAG_PREFIX + "down:"
HITS_SUFFIX = ":hits"
#: ``diag.gate``'s gates (``payload["gate"]``).
GATE_PREFIX = DIAG_PREFIX + "gate:"
#: ``diag.record``'s execution logs (``payload["log"]``), and the suffix of their release keys.
RECORD_PREFIX = DIAG_PREFIX + "record:"
RECORD_RELEASE_SUFFIX = ":release"
#: The run-time logs of ``diag.limited`` and ``diag.sender`` (``payload["log"]``).
RATE_LOG_PREFIX = DIAG_PREFIX + "rate:"
#: How long a key a diagnostic job wrote lives after its last write.
DIAG_KEY_TTL_S = 24 * 3600


def counter_key(name: str) -> str:
    """The Redis key counting the calls of the diagnostic jobs given ``{"counter": name}``."""
    return COUNTER_PREFIX + name


def down_key(name: str) -> str:
    """The Redis key that takes the stand-in dependency ``{"down_key": name}`` down."""
    return DOWN_PREFIX + name


def hits_key(name: str) -> str:
    """The Redis key counting the calls that met dependency ``name`` down."""
    return DOWN_PREFIX + name + HITS_SUFFIX


def gate_key(name: str) -> str:
    """The Redis key that opens the ``diag.gate`` jobs waiting on gate ``name``."""
    return GATE_PREFIX + name


def record_log_key(name: str) -> str:
    """The Redis list holding the execution log ``name`` of the ``diag.record`` jobs."""
    return RECORD_PREFIX + name


def record_release_key(name: str) -> str:
    """The Redis key that ends the holds of the ``diag.record`` jobs logging to ``name``."""
    return RECORD_PREFIX + name + RECORD_RELEASE_SUFFIX


def rate_log_key(name: str) -> str:
    """The Redis list of the times ``diag.limited`` / ``diag.sender`` jobs logging to ``name`` ran."""
    return RATE_LOG_PREFIX + name
