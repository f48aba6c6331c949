"""What a producer holds: job specs, handles on published jobs, and the errors they raise."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from taskfleet.routing.priority import Priority

DEFAULT_RESULT_TIMEOUT_S = 30.0


class PayloadError(ValueError):
    """A payload that cannot be sent: not JSON-serialisable, or over the size limit."""


class JobFailed(RuntimeError):
    """The job ended in FAILURE; ``error_type`` and ``args`` say what it raised."""

    def __init__(self, job_id: str, error_type: str, message: str) -> None:
        super().__init__(f"job {job_id} failed: {error_type}: {message}")
        self.job_id = job_id
        self.error_type = error_type


@dataclass(frozen=True)
class JobSpec:
    """One job for :meth:`Client.enqueue_many`."""

    kind: str
    payload: Any = None
    priority: Priority | None = None
    idempotency_key: str | None = None


@dataclass(slots=True)
class JobHandle:
    """A published job: its id, its state, and its result when it has one."""

    id: str
    kind: str
    app: Celery = field(repr=False)
    deduplicated: bool = False

    @property
    def async_result(self) -> AsyncResult:
        """Celery's view of the job."""
        return AsyncResult(self.id, app=self.app)

    def status(self) -> str:
        """PENDING, STARTED, RETRY, SUCCESS, FAILURE or REVOKED."""
        return str(self.async_result.state)

    def ready(self) -> bool:
        """Whether the job has finished (either way)."""
        return bool(self.async_result.ready())

    def result(self, timeout: float | None = DEFAULT_RESULT_TIMEOUT_S) -> Any:
        """Wait up to ``timeout`` seconds for the job's return value.

        Raises:
            JobFailed: the job raised; the error type and message are on the exception.
            TimeoutError: the job did not finish in time (it may still finish later).
        """
        from celery.exceptions import TimeoutError as CeleryTimeout

        res = self.async_result
        try:
            value = res.get(timeout=timeout, propagate=False, disable_sync_subtasks=False)
        except CeleryTimeout:
            raise TimeoutError(
                f"job {self.id} ({self.kind}) not finished after {timeout}s"
            ) from None
        if res.failed():
            raise JobFailed(self.id, type(value).__name__, str(value))
        return value


def as_spec(item: JobSpec | tuple[str, Any] | Mapping[str, Any]) -> JobSpec:
    """Normalise one ``enqueue_many`` item."""
    if isinstance(item, JobSpec):
        return item
    if isinstance(item, tuple):
        return JobSpec(*item)
    if isinstance(item, Mapping):
        return JobSpec(**item)
    raise TypeError(f"a job is a JobSpec, a (kind, payload) tuple or a mapping, not {item!r}")
