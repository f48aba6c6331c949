"""The scenario's producer: a backlog at once, then a steady trickle from a thread.

Only ids whose enqueue call returned count as sent: a call refused while the broker is
down is counted apart (``refused``), never as a lost job.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from taskfleet.client import Client

KIND_CPU = "diag.record"
KIND_IO = "diag.record_io"
REFUSED_PAUSE_S = 0.2


class Producer:
    """Enqueues ``diag.record`` jobs logging to one execution log.

    Args:
        client: A taskfleet client bound to the scenario's fleet.
        log_name: The execution log (``payload["log"]``).
        hold_ms: How long each job holds (``payload["ms"]``).
        kind: ``diag.record`` (CPU pool) or ``diag.record_io`` (I/O pool).
    """

    def __init__(self, client: Client, log_name: str, hold_ms: int, kind: str = KIND_CPU) -> None:
        """Prepare; nothing is sent yet."""
        self.client = client
        self.log_name = log_name
        self.hold_ms = hold_ms
        self.kind = kind
        self.sent: list[str] = []
        self.refused = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _payload(self, index: int) -> dict[str, Any]:
        return {"log": self.log_name, "ms": self.hold_ms, "n": index}

    def backlog(self, jobs: int) -> None:
        """Enqueue ``jobs`` jobs in one batch."""
        start = len(self.sent)
        handles = self.client.enqueue_many(
            [(self.kind, self._payload(start + i)) for i in range(jobs)]
        )
        with self._lock:
            self.sent.extend(h.id for h in handles)

    def start(self, rate: float) -> None:
        """Send ``rate`` jobs per second from a thread until :meth:`stop` (0: do nothing)."""
        if rate <= 0:
            return
        self._thread = threading.Thread(target=self._run, args=(rate,), daemon=True)
        self._thread.start()

    def _run(self, rate: float) -> None:
        interval = 1.0 / rate
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                handle = self.client.enqueue(self.kind, self._payload(len(self.sent)))
            except Exception:  # the broker is down: not sent, try again shortly
                self.refused += 1
                self._stop.wait(REFUSED_PAUSE_S)
                next_at = time.monotonic()
                continue
            with self._lock:
                self.sent.append(handle.id)
            next_at += interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        """Stop the thread (bounded: one enqueue call at most)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def ids(self) -> list[str]:
        """A copy of the ids sent so far."""
        with self._lock:
            return list(self.sent)
