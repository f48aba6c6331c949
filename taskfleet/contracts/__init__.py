"""Contract jobs: a document model, canonical form, fingerprint, evaluation and summary.

The pure functions live here; ``taskfleet.tasks.contract_jobs`` wraps each phase as a Celery
job on the CPU pool, and ``taskfleet.contracts.api`` submits documents to a fleet.
"""

from __future__ import annotations

from taskfleet.contracts.canonical import canonical_json, fingerprint_of, normalise
from taskfleet.contracts.model import Contract, FieldError, validate_document
from taskfleet.contracts.pipeline import PHASES, gather, process, run_phase

__all__ = [
    "PHASES",
    "Contract",
    "FieldError",
    "canonical_json",
    "fingerprint_of",
    "gather",
    "normalise",
    "process",
    "run_phase",
    "validate_document",
]
