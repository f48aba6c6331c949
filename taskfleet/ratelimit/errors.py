"""The refusals a producer or a job can meet: over a rate limit, or the fleet overloaded."""

from __future__ import annotations


class RateLimited(Exception):
    """Over a rate limit; nothing was published (at enqueue) or the job was deferred.

    Attributes:
        retry_after: Seconds until the same call would be admitted (at the earliest).
        scope: What was limited, e.g. ``client:acme`` or ``kind:cpu.checksum``.
    """

    def __init__(self, retry_after: float, scope: str = "") -> None:
        super().__init__(f"rate limited ({scope or 'limit'}): retry after {retry_after:.3f}s")
        self.retry_after = retry_after
        self.scope = scope

    def __reduce__(self) -> tuple[type[RateLimited], tuple[float, str]]:
        return type(self), (self.retry_after, self.scope)


class Overloaded(Exception):
    """A queue's backlog or its oldest job's age is past its bound; nothing was published.

    Attributes:
        retry_after: Seconds to wait before trying again.
        queue: The overloaded queue.
    """

    def __init__(self, retry_after: float, queue: str = "") -> None:
        super().__init__(f"queue {queue!r} overloaded: retry after {retry_after:.3f}s")
        self.retry_after = retry_after
        self.queue = queue

    def __reduce__(self) -> tuple[type[Overloaded], tuple[float, str]]:
        return type(self), (self.retry_after, self.queue)


class BatchTooLarge(ValueError):
    """An ``enqueue_many`` batch larger than its limit's burst: it could never be admitted
    whole (batches are all or nothing); split it."""


class LimitStorageError(RuntimeError):
    """The rate-limit storage is unreachable or failed (the configured fallback applies)."""
