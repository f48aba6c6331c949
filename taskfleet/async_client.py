"""The asyncio face of :class:`taskfleet.client.Client`.

It depends on the sync client, never the reverse: import it from here
(``from taskfleet.async_client import AsyncClient``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from taskfleet.client import Client
from taskfleet.handles import DEFAULT_RESULT_TIMEOUT_S, JobHandle


class AsyncClient:
    """The asyncio face of :class:`Client` for async services.

    Publishing takes one round trip (a pipeline or a transaction), so it runs in the default
    executor rather than duplicating the client on ``redis.asyncio``; waiting for results
    likewise, so the event loop is never blocked.
    """

    def __init__(self, client: Client | None = None) -> None:
        self.client = client if client is not None else Client()

    async def enqueue(self, kind: str, payload: Any = None, **options: Any) -> JobHandle:
        """See :meth:`Client.enqueue`."""
        return await asyncio.to_thread(self.client.enqueue, kind, payload, **options)

    async def enqueue_many(self, jobs: Iterable[Any], **options: Any) -> list[JobHandle]:
        """See :meth:`Client.enqueue_many`."""
        return await asyncio.to_thread(self.client.enqueue_many, list(jobs), **options)

    async def result(self, handle: JobHandle, timeout: float = DEFAULT_RESULT_TIMEOUT_S) -> Any:
        """Wait for a job's result without blocking the event loop."""
        return await asyncio.to_thread(handle.result, timeout)
