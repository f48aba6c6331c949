"""Validating jobs before they are sent: the one path ``enqueue`` and ``enqueue_many`` share.

:class:`JobPreparer` is the part of :class:`taskfleet.client.Client` that checks each job
once (its kind's queue, its priority, its JSON body and size) and fixes its id, with no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from taskfleet.config.settings import Settings
from taskfleet.handles import JobSpec, PayloadError, as_spec
from taskfleet.publishing import PreparedJobs
from taskfleet.routing.priority import Priority, parse_priority
from taskfleet.routing.topology import Pool, Topology, UnknownJobKind
from taskfleet.routing.wire import encode_single_arg_body, job_id_for, new_job_ids

#: One ``enqueue_many`` item: a spec, a ``(kind, payload)`` pair, or a mapping of JobSpec's fields.
JobItem = JobSpec | tuple[str, Any] | Mapping[str, Any]


class JobPreparer:
    """Validates jobs against the job table, the topology and the settings (no I/O)."""

    settings: Settings
    topology: Topology
    _pools: Mapping[str, Pool]

    def _queue_of(self, kind: str) -> str:
        """The work queue of a job kind.

        Raises:
            UnknownJobKind: no task of that kind is registered.
        """
        pool = self._pools.get(kind)
        if pool is None:
            known = ", ".join(sorted(self._pools))
            raise UnknownJobKind(f"unknown job kind {kind!r}; known kinds: {known}")
        return self.topology.queue_for_pool(pool)

    def _body(self, kind: str, payload: Any) -> bytes:
        """The JSON body of a job with ``payload`` as its one argument, validated."""
        try:
            body = encode_single_arg_body(payload)
        except (TypeError, ValueError) as exc:
            raise PayloadError(f"payload for {kind!r} is not JSON-serialisable: {exc}") from None
        if len(body) > self.settings.max_payload_bytes:
            raise PayloadError(
                f"payload for {kind!r} is {len(body)} bytes, over the "
                f"{self.settings.max_payload_bytes}-byte limit (TASKFLEET_MAX_PAYLOAD_BYTES)"
            )
        return body

    def prepare(self, jobs: Sequence[JobItem], priority: Priority | None = None) -> PreparedJobs:
        """Validate ``jobs`` and fix their ids, sending nothing (what ``enqueue_many`` sends).

        Args:
            jobs: The jobs, in order.
            priority: The priority of a job that names none.

        Raises:
            UnknownJobKind, PayloadError, PriorityError: a job cannot be sent.
            TypeError: an item is not a job.
        """
        default = parse_priority(priority)
        prepared = PreparedJobs(job_ids=new_job_ids(len(jobs)))
        kinds, bodies, queues = prepared.kinds, prepared.bodies, prepared.queues
        levels, keys = prepared.priorities, prepared.keys
        queue_of: dict[str, str] = {}
        encode = self._body
        for at, item in enumerate(jobs):
            if type(item) is tuple and len(item) == 2:  # the common (kind, payload) form
                kind, payload = item
                spec_priority, key = None, None
            else:
                spec = as_spec(item)
                kind, payload = spec.kind, spec.payload
                spec_priority, key = spec.priority, spec.idempotency_key
            queue = queue_of.get(kind)
            if queue is None:
                queue = queue_of[kind] = self._queue_of(kind)
            levels.append(default if spec_priority is None else parse_priority(spec_priority))
            if key is not None:
                prepared.job_ids[at] = job_id_for(kind, key)
            bodies.append(encode(kind, payload))
            kinds.append(kind)
            queues.append(queue)
            keys.append(key)
        return prepared
