"""The asyncio face of :class:`taskfleet.client.Client`.

It depends on the sync client, never the reverse: import it from here
(``from taskfleet.async_client import AsyncClient``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from celery import states

from taskfleet.async_results import ResultWaiter
from taskfleet.client import Client, JobItem, Overloaded
from taskfleet.handles import DEFAULT_RESULT_TIMEOUT_S, JobFailed, JobHandle, JobSpec
from taskfleet.observability.tracing import publish_span
from taskfleet.publishing import AsyncPublisher, PreparedJobs, async_publisher_for
from taskfleet.routing.priority import Priority


class AsyncClient:
    """The asyncio face of :class:`Client` for async services.

    Jobs are validated by the sync client's one path (:meth:`Client.prepare`, no I/O). On a
    Redis broker they are published natively on ``redis.asyncio`` (the same envelopes and
    claim-and-push script as the sync publisher); on RabbitMQ the sync publisher runs in the
    default executor, one thread per call in flight. Results are awaited on ``redis.asyncio``
    with either broker (:class:`taskfleet.async_results.ResultWaiter`): thousands of waiters
    share two connections and no thread. Build one per event loop; ``await close()`` it.
    """

    def __init__(self, client: Client | None = None) -> None:
        self.client = client if client is not None else Client()
        self._publisher: AsyncPublisher | None = None
        self._waiter: ResultWaiter | None = None

    def _async_publisher(self) -> AsyncPublisher | None:
        """The native publisher of the broker's scheme (built on first use), or None."""
        if self._publisher is None:
            self._publisher = async_publisher_for(self.client.publisher_config)
        return self._publisher

    async def _publish(
        self, jobs: PreparedJobs, client_id: str | None, group: str | None, affinity: str | None
    ) -> list[JobHandle]:
        client = self.client
        if client.router is not None or group is not None:  # a reading may need Redis
            await asyncio.to_thread(client.place, jobs, group, affinity)
        client_id = client.sender(client_id)
        gate = client.gate
        if gate is not None:  # its Redis call runs off the event loop
            await asyncio.to_thread(gate.admit, jobs.queues, jobs.priorities, client_id)
        publisher = self._async_publisher()
        with publish_span(client.tracer, jobs.kinds) as jobs.headers:
            if publisher is not None:
                fresh = await publisher.publish(jobs, client_id)
            else:
                fresh = await asyncio.to_thread(client.publisher.publish, jobs, client_id)
        return client.handles_for(jobs, fresh)

    async def enqueue(
        self,
        kind: str,
        payload: Any = None,
        *,
        priority: Priority | None = None,
        idempotency_key: str | None = None,
        client_id: str | None = None,
        group: str | None = None,
        affinity: str | None = None,
    ) -> JobHandle:
        """See :meth:`Client.enqueue` (the same arguments, errors and stale answers)."""
        jobs = self.client.prepare([JobSpec(kind, payload, priority, idempotency_key)])
        try:
            return (await self._publish(jobs, client_id, group, affinity))[0]
        except Overloaded as exc:
            stale = self.client.stale
            answer = None if stale is None else await asyncio.to_thread(
                stale.answer, kind, payload, exc.queue
            )  # fmt: skip
            if answer is None:
                raise
            return answer

    async def enqueue_many(
        self,
        jobs: Iterable[JobItem],
        *,
        priority: Priority | None = None,
        client_id: str | None = None,
        group: str | None = None,
        affinity: str | None = None,
    ) -> list[JobHandle]:
        """See :meth:`Client.enqueue_many`."""
        prepared = self.client.prepare(list(jobs), priority)
        return await self._publish(prepared, client_id, group, affinity)

    async def result(
        self, handle: JobHandle, timeout: float | None = DEFAULT_RESULT_TIMEOUT_S
    ) -> Any:
        """Wait for a job's result without blocking the event loop or holding a thread.

        Raises:
            JobFailed: the job raised; the error type and message are on the exception.
            TimeoutError: the job did not finish in time (it may still finish later).
        """
        if self._waiter is None:
            self._waiter = ResultWaiter(self.client.app, self.client.urls.redis_url)
        try:
            meta = await self._waiter.wait(handle.id, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"job {handle.id} ({handle.kind}) not finished after {timeout}s"
            ) from None
        value = meta.get("result")
        if meta["status"] == states.FAILURE:
            raise JobFailed(handle.id, type(value).__name__, str(value))
        return value

    async def close(self) -> None:
        """Release this client's async connections (not the sync client's)."""
        if self._publisher is not None:
            await self._publisher.close()
        if self._waiter is not None:
            await self._waiter.close()
