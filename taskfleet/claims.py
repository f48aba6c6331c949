"""Idempotency claims that a producer crash cannot strand.

A keyed job's id is derived from its key (:func:`taskfleet.routing.wire.job_id_for`), and a
marker ``taskfleet:idem:<job id>`` says "this job was published": a retried producer call
that finds the marker returns the first job instead of publishing a second. The marker must
never outlive a job that was not published, or every retry for its TTL would return a job
that never runs. Two schemes, one per broker:

* **Redis broker: claim and publish in one step.** One Lua script (:data:`CLAIM_AND_PUSH_LUA`,
  run by :mod:`taskfleet.publishing.redis` and its asyncio twin)
  checks the markers, LPUSHes the new jobs' envelopes onto their priority sub-lists and only
  then sets the markers (full TTL), atomically on the broker's Redis. There is no window: a
  producer that dies before the script sent nothing and claimed nothing; one that dies after
  it published and claimed. The markers therefore live on the *broker* Redis. A failed call
  never deletes markers: if the script ran and only its reply was lost, the job is queued.
* **RabbitMQ: claim briefly, confirm after the broker has the job.** The claim is ``SET NX``
  of ``pending:<token>`` with a TTL of a few seconds (:data:`CLAIM_WINDOW_S`); after the AMQP
  transaction holding the job commits, the marker becomes the job's kind with the full TTL.
  A producer that dies in between leaves a claim that expires within the window. A publish
  that fails releases the caller's own pending claims (compare-and-delete on the token).

A call that finds another caller's *pending* claim (a concurrent duplicate, or a retry while
the first call is between claim and publish) waits until it resolves: confirmed, it returns
the job (``deduplicated``); expired (the first producer died), it claims and publishes the
job itself. It never publishes while the first call may still publish, and never returns a
job that will never exist. The one duplicate left is a producer that stalls past the window
and then publishes anyway (or dies after its commit, before confirming): the job is sent
twice under the same id; delivery is at-least-once anyway and results are keyed by id, a
final state never overwritten by a later one.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Sequence

import redis

IDEMPOTENCY_PREFIX = "taskfleet:idem:"
#: Value prefix of a claim whose job is not yet confirmed as published (RabbitMQ).
PENDING_PREFIX = "pending:"
#: Seconds a RabbitMQ claim lives before the publish confirms it (a crash's cost for a retry).
CLAIM_WINDOW_S = 10.0
#: How often a caller blocked on another caller's pending claim looks again.
PENDING_POLL_S = 0.05
#: Values per LPUSH (in the script, Lua's ``unpack`` is bounded by its C stack).
PUSH_CHUNK = 1000
#: A marker lives as long as the job's result stays in Redis, but never less than this many
#: visibility timeouts: a job delivered again after one timeout is still covered while it runs.
IDEMPOTENCY_VISIBILITY_TIMEOUTS = 2

# KEYS: the priority sub-lists, then one marker per keyed job.
# ARGV: ttl, then per job: sub-list index (into KEYS), marker index (0: unkeyed), kind, envelope.
# Returns 1 per job that was pushed, 0 per job already claimed (earlier, or earlier in the
# batch). Markers are set after every push, so a failure midway never claims an unsent job.
CLAIM_AND_PUSH_LUA = """
local ttl = ARGV[1]
local fresh, pending, seen, claims = {}, {}, {}, {}
local n = (#ARGV - 1) / 4
for j = 0, n - 1 do
  local at = 2 + j * 4
  local li, ci = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
  local new = 1
  if ci > 0 then
    local key = KEYS[ci]
    if seen[key] or redis.call('EXISTS', key) == 1 then
      new = 0
    else
      seen[key] = true
      claims[#claims + 1] = {key, ARGV[at + 2]}
    end
  end
  fresh[j + 1] = new
  if new == 1 then
    local values = pending[li]
    if values == nil then values = {}; pending[li] = values end
    values[#values + 1] = ARGV[at + 3]
  end
end
local chunk = tonumber(ARGV_CHUNK)
for li, values in pairs(pending) do
  for s = 1, #values, chunk do
    redis.call('LPUSH', KEYS[li], unpack(values, s, math.min(s + chunk - 1, #values)))
  end
end
for _, claim in ipairs(claims) do
  redis.call('SET', claim[1], claim[2], 'EX', ttl)
end
return fresh
""".replace("ARGV_CHUNK", str(PUSH_CHUNK))

# Delete each marker (KEYS) still holding this caller's pending value (ARGV[1]).
_RELEASE = """
local freed = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then freed = freed + redis.call('DEL', key) end
end
return freed
"""


class ClaimPending(TimeoutError):
    """Another producer's claim on the same job stayed pending past every deadline."""


def idempotency_ttl(result_expires: int, visibility_timeout: float) -> int:
    """Seconds a confirmed marker lives: ``TASKFLEET_RESULT_EXPIRES``, at least
    :data:`IDEMPOTENCY_VISIBILITY_TIMEOUTS` x ``TASKFLEET_VISIBILITY_TIMEOUT``."""
    return max(int(result_expires), math.ceil(visibility_timeout * IDEMPOTENCY_VISIBILITY_TIMEOUTS))


def claim_key(job_id: str) -> str:
    """The marker of a keyed job."""
    return IDEMPOTENCY_PREFIX + job_id


def push_groups(
    lists: Sequence[str], envelopes: Sequence[bytes | str]
) -> list[tuple[str, Sequence[bytes | str]]]:
    """The LPUSHes of unkeyed envelopes: one per list and :data:`PUSH_CHUNK` values, in
    order. ``LPUSH key a b c`` pushes a, then b, then c, as three single LPUSHes would: every
    list keeps the batch's order."""
    by_list: dict[str, list[bytes | str]] = {}
    for list_key, envelope in zip(lists, envelopes, strict=True):
        by_list.setdefault(list_key, []).append(envelope)
    return [
        (list_key, values[start : start + PUSH_CHUNK])
        for list_key, values in by_list.items()
        for start in range(0, len(values), PUSH_CHUNK)
    ]


def claim_and_push_args(
    lists: Sequence[str],
    envelopes: Sequence[bytes | str],
    keyed_ids: Sequence[str | None],
    kinds: Sequence[str],
    ttl_s: int,
) -> tuple[list[str], list[bytes | str | int]]:
    """The KEYS and ARGV of one :data:`CLAIM_AND_PUSH_LUA` call: push every unkeyed job and
    every keyed one (``keyed_ids[i]`` not None) whose marker is unset, then set those markers.

    Args:
        lists: The priority sub-list of each job.
        envelopes: Each job's Redis envelope.
        keyed_ids: The job id of each keyed job, None for an unkeyed one.
        kinds: Each job's kind (the marker's value).
        ttl_s: Seconds the markers live.
    """
    list_index: dict[str, int] = {}
    for name in lists:
        list_index.setdefault(name, len(list_index) + 1)
    keys: list[str] = list(list_index)
    argv: list[bytes | str | int] = [ttl_s]
    for name, envelope, job_id, kind in zip(lists, envelopes, keyed_ids, kinds, strict=True):
        at = 0
        if job_id is not None:
            keys.append(claim_key(job_id))
            at = len(keys)
        argv.extend((list_index[name], at, kind, envelope))
    return keys, argv


class PendingClaims:
    """Short claims confirmed after the publish (RabbitMQ, where nothing spans both stores)."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self._release = client.register_script(_RELEASE)

    def claim(
        self, jobs: Sequence[tuple[str, str, bool]], window_s: float = CLAIM_WINDOW_S
    ) -> tuple[list[bool], str]:
        """Claim each keyed (job id, kind, keyed) job for ``window_s`` seconds.

        Waits while another caller's claim on a job is pending (see the module docstring).

        Returns:
            Per job whether this call must publish it, and the token of this call's claims.

        Raises:
            ClaimPending: another caller's claim neither resolved nor expired in time.
        """
        token = PENDING_PREFIX + uuid.uuid4().hex
        first: dict[str, int] = {}  # a key twice in one batch: only its first job is sent
        for at, (job_id, _, keyed) in enumerate(jobs):
            if keyed:
                first.setdefault(job_id, at)
        mine: set[str] = set()
        todo = list(first)
        deadline = time.monotonic() + window_s
        while todo:
            pipe = self.client.pipeline(transaction=False)
            for job_id in todo:
                pipe.set(claim_key(job_id), token, nx=True, px=int(window_s * 1000))
                pipe.get(claim_key(job_id))
                pipe.pttl(claim_key(job_id))
            replies = pipe.execute()
            waiting: list[str] = []
            for i, job_id in enumerate(todo):
                was_set, value, ttl_ms = replies[3 * i : 3 * i + 3]
                if was_set:
                    mine.add(job_id)
                elif value is None:  # expired between SET and GET: try again at once
                    waiting.append(job_id)
                elif bytes(value).decode().startswith(PENDING_PREFIX):  # another caller's
                    waiting.append(job_id)
                    deadline = max(deadline, time.monotonic() + max(ttl_ms, 0) / 1000 + window_s)
            todo = waiting
            if todo and time.monotonic() > deadline:
                self.release(sorted(mine), token)
                raise ClaimPending(f"idempotency claims still pending: {sorted(todo)[:5]}")
            if todo:
                time.sleep(PENDING_POLL_S)
        fresh = [
            not keyed or (job_id in mine and first[job_id] == at)
            for at, (job_id, _, keyed) in enumerate(jobs)
        ]
        return fresh, token

    def confirm(self, jobs: Sequence[tuple[str, str]]) -> None:
        """Mark published (job id, kind) jobs as enqueued for the full TTL."""
        if not jobs:
            return
        pipe = self.client.pipeline(transaction=False)
        for job_id, kind in jobs:
            pipe.set(claim_key(job_id), kind, ex=self.ttl_s)
        pipe.execute()

    def release(self, job_ids: Sequence[str], token: str) -> None:
        """Free the claims this caller (``token``) still holds pending on ``job_ids``."""
        if job_ids:
            self._release(keys=[claim_key(j) for j in job_ids], args=[token])
