"""Circuit breakers shared by the whole fleet: the strategy here, the state in a storage.

A :class:`CircuitBreaker` asks its storage to admit each call and reports each outcome; the
storage makes every transition atomically (one Lua script on Redis), so all workers on all
hosts see one state and a dependency is cut off once, fleet-wide. When the storage is down
the breaker follows ``storage_fallback`` ("closed": let calls through; "open": defer them).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from taskfleet.resilience.storage import (
    Admission,
    BreakerConfig,
    BreakerStorage,
    StorageError,
)

log = logging.getLogger(__name__)
Listener = Callable[[str, str, str], None]
"""Called as ``listener(breaker_name, old_state, new_state)`` in the process that moved it."""


class BreakerOpen(RuntimeError):
    """A call was refused: the breaker is open (or half-open with its trials taken)."""

    def __init__(self, name: str, retry_at: float) -> None:
        super().__init__(f"circuit breaker {name!r} is open; retry after {retry_at:.3f}")
        self.name = name
        self.retry_at = retry_at


@dataclass
class CircuitBreaker:
    """One named breaker.

    Attributes:
        name: shared by every process guarding the same dependency.
        storage: where the state lives (``storage_from_url``).
        config: thresholds and timeouts.
        fallback: called with the job's arguments instead of deferring while open.
        failure_types: only these errors count as the dependency failing.
        storage_fallback: behaviour while the storage is unreachable.
        listeners: told about every state change this process makes.
        clock: wall-clock seconds (shared across hosts, unlike ``monotonic``).
    """

    name: str
    storage: BreakerStorage
    config: BreakerConfig = field(default_factory=BreakerConfig)
    fallback: Callable[..., Any] | None = None
    failure_types: tuple[type[BaseException], ...] = (Exception,)
    storage_fallback: Literal["closed", "open"] = "closed"
    listeners: list[Listener] = field(default_factory=list)
    clock: Callable[[], float] = time.time
    counters: Counter[str] = field(default_factory=Counter)
    #: Successes in the closed state not yet sent to the storage (sent with the next admit).
    pending_successes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _count(self, name: str) -> None:
        with self._lock:
            self.counters[name] += 1

    def _notify(self, old: str, new: str) -> None:
        if old == new:
            return
        for listener in self.listeners:
            try:
                listener(self.name, old, new)
            except Exception:  # a listener must never fail a job
                log.exception("breaker %s: listener %r failed", self.name, listener)

    def admit(self) -> Admission:
        """Ask to make one call; an ``allowed=False`` answer carries when to come back."""
        now = self.clock()
        with self._lock:
            pending, self.pending_successes = self.pending_successes, 0
        try:
            admission = self.storage.acquire(self.name, self.config, now, pending)
        except StorageError as exc:
            self._count("storage_errors")
            log.warning("breaker %s: %s; acting %s", self.name, exc, self.storage_fallback)
            if self.storage_fallback == "open":
                self._count("rejected")
                return Admission(False, "open", retry_at=now + self.config.reset_timeout)
            self._count("allowed")
            return Admission(True, "closed")
        self._count("allowed" if admission.allowed else "rejected")
        self._notify(admission.previous, admission.state)
        return admission

    def record(self, admission: Admission, error: BaseException | None) -> None:
        """Report the outcome of an admitted call (errors not in ``failure_types`` succeed)."""
        success = error is None or not isinstance(error, self.failure_types)
        self._count("successes" if success else "failures")
        if success and admission.state == "closed" and admission.fails == 0:
            # Nothing to reset: count it with the next admission (one round trip per call).
            with self._lock:
                self.pending_successes += 1
            return
        try:
            before, after = self.storage.record(
                self.name, self.config, self.clock(), success, admission.trial
            )
        except StorageError as exc:
            self._count("storage_errors")
            log.warning("breaker %s: outcome not recorded: %s", self.name, exc)
            return
        self._notify(before, after)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``fn`` through the breaker; while open, answer with the fallback or raise.

        Raises:
            BreakerOpen: the breaker refused the call and there is no fallback.
        """
        admission = self.admit()
        if not admission.allowed:
            if self.fallback is not None:
                self._count("fallbacks")
                return self.fallback(*args, **kwargs)
            raise BreakerOpen(self.name, admission.retry_at)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self.record(admission, exc)
            raise
        self.record(admission, None)
        return result

    def snapshot(self) -> dict[str, Any]:
        """Fleet-wide state and counters from the storage, plus this process's counters."""
        try:
            shared = self.storage.snapshot(self.name)
        except StorageError:
            shared = {"state": "unknown"}
        return shared | {"local": dict(self.counters)}
