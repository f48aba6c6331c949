"""Circuit breakers shared by the whole fleet: the strategy here, the state in a storage.

A :class:`CircuitBreaker` asks its storage to admit each call and reports each outcome; the
storage makes every transition atomically (one Lua script on Redis), so all workers on all
hosts see one state and a dependency is cut off once, fleet-wide. When the storage is down
the breaker follows ``storage_fallback`` ("closed": let calls through; "open": defer them).

Admission lease (``lease_s`` > 0 with an event ``feed``): when the storage answers "closed,
no failure counted", the process admits further calls itself for ``lease_s`` seconds, with
no round trip; their successes and the admissions are counted locally and sent with the
next storage call (a lease renewal, or a failure). The lease ends early when a call fails in
this process (the failure is recorded at once), when the ``feed`` reports that the breaker
started failing or opened anywhere in the fleet (Redis pub/sub, published by the storage's
script), or when the feed loses its subscription. Half-open trials never use it.

How many calls reach a dead dependency fleet-wide before the breaker opens: at most
``fail_max + S - 1``, S being the job slots (processes x concurrency) that call it, with or
without the lease, since each failure is recorded at once, ends that process's lease, and
no lease is granted while failures are being counted: each slot adds at most one call to
the ``fail_max`` counted ones (the one it had running, or one started from a lease it still
held). What the lease changes is when idle slots stop: without it, from the moment the
breaker opens; with it, once the "started failing" event (sent at the first failure, before
the opening) reaches them, after one pub/sub hop (under a millisecond on a LAN), and at
worst ``lease_s`` later if their subscription dropped without notice. The failure rate
misses at most ``lease_s`` of each process's successes, which can only make it open sooner.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from taskfleet.resilience.storage import (
    Admission,
    BreakerConfig,
    BreakerStorage,
    Pending,
    StorageError,
)

log = logging.getLogger(__name__)
Listener = Callable[[str, str, str], None]
"""Called as ``listener(breaker_name, old_state, new_state)`` in the process that moved it."""
#: What a call admitted from the lease gets (closed, no failure counted, nothing moved).
LEASED = Admission(True, "closed", previous="closed")


class Events(Protocol):
    """Breaker events seen by this process (``taskfleet.resilience.runtime.EventFeed``)."""

    def epoch(self, name: str) -> int | None:
        """Changes whenever ``name`` starts failing or opens; ``None`` while not following."""


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
        lease_s: admission lease length in seconds; 0 asks the storage for every call.
        feed: fleet-wide breaker events; without it there is no lease.
        monotonic: the local clock the lease runs on.
    """

    name: str
    storage: BreakerStorage
    config: BreakerConfig = field(default_factory=BreakerConfig)
    fallback: Callable[..., Any] | None = None
    failure_types: tuple[type[BaseException], ...] = (Exception,)
    storage_fallback: Literal["closed", "open"] = "closed"
    listeners: list[Listener] = field(default_factory=list)
    clock: Callable[[], float] = time.time
    lease_s: float = 0.0
    feed: Events | None = None
    monotonic: Callable[[], float] = time.monotonic
    counters: Counter[str] = field(default_factory=Counter)
    #: Successes in the closed state not yet sent to the storage (sent with the next call).
    pending_successes: int = 0
    #: Calls admitted from the lease not yet counted by the storage.
    pending_admits: int = 0
    _lease_until: float = field(default=0.0, repr=False)
    _lease_epoch: int | None = field(default=None, repr=False)
    #: Bumped when this process ends its lease, so a renewal in flight does not revive it.
    _drops: int = field(default=0, repr=False)
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

    def _take_pending(self) -> Pending:
        with self._lock:
            pending = Pending(self.pending_successes, self.pending_admits)
            self.pending_successes = self.pending_admits = 0
        return pending

    def _give_back(self, pending: Pending) -> None:
        with self._lock:
            self.pending_successes += pending.successes
            self.pending_admits += pending.admits

    def drop_lease(self) -> None:
        """End this process's lease: the next call asks the storage."""
        with self._lock:
            self._lease_until = 0.0
            self._drops += 1

    def holds_lease(self) -> bool:
        """Whether the next admission would come from this process's lease."""
        if self._lease_until <= self.monotonic():
            return False
        feed = self.feed
        return feed is not None and feed.epoch(self.name) == self._lease_epoch

    def _from_lease(self) -> bool:
        if not self.holds_lease():
            return False
        with self._lock:
            self.pending_admits += 1
            self.counters["allowed"] += 1
            self.counters["leased"] += 1
        return True

    def admit(self) -> Admission:
        """Ask to make one call; an ``allowed=False`` answer carries when to come back."""
        if self.lease_s > 0 and self._from_lease():
            return LEASED
        feed = self.feed if self.lease_s > 0 else None
        epoch = feed.epoch(self.name) if feed is not None else None
        drops = self._drops
        now = self.clock()
        pending = self._take_pending()
        try:
            admission = self.storage.acquire(self.name, self.config, now, pending)
        except StorageError as exc:
            self._give_back(pending)
            self.drop_lease()
            self._count("storage_errors")
            log.warning("breaker %s: %s; acting %s", self.name, exc, self.storage_fallback)
            if self.storage_fallback == "open":
                self._count("rejected")
                return Admission(False, "open", retry_at=now + self.config.reset_timeout)
            self._count("allowed")
            return Admission(True, "closed")
        self._count("allowed" if admission.allowed else "rejected")
        if epoch is not None and admission.state == "closed" and admission.fails == 0:
            self._take_lease(epoch, drops)  # closed, no failure counted: admit here a while
        self._notify(admission.previous, admission.state)
        return admission

    def _take_lease(self, epoch: int, drops: int) -> None:
        with self._lock:
            if self._drops == drops:  # no failure here since the storage was asked
                self._lease_until = self.monotonic() + self.lease_s
                self._lease_epoch = epoch

    def record(self, admission: Admission, error: BaseException | None) -> None:
        """Report the outcome of an admitted call (errors not in ``failure_types`` succeed)."""
        success = error is None or not isinstance(error, self.failure_types)
        self._count("successes" if success else "failures")
        if success and admission.state == "closed" and admission.fails == 0:
            # Nothing to reset: count it with the next storage call.
            with self._lock:
                self.pending_successes += 1
            return
        if not success:
            self.drop_lease()
        pending = self._take_pending()
        try:
            before, after = self.storage.record(
                self.name, self.config, self.clock(), success, admission.trial, pending
            )
        except StorageError as exc:
            self._give_back(pending)
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
