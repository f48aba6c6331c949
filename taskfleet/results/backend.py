"""Celery result backend: Celery's own Redis format, plus durable copies in PostgreSQL.

Keys stay ``celery-task-meta-<id>`` so any Celery client (or another language reading
Celery's Redis backend) reads results as usual. Each write also appends the result to the
persistence stream in the same script, and ``ResultPersister`` moves it to Postgres in
batches. Redis is a bounded cache (``result_expires``, an hour by default) and Postgres the
record: the stream entry carries the durable retention (``result_retention``, a week), the
row's ``expires_at``. A result Redis no longer has (expiry, restart) is read back from
Postgres and back-filled for ``BACKFILL_TTL_S`` only: a client polling an old job reads Redis,
and old reads do not refill Redis for a full TTL. A write refused by a full Redis
(``noeviction``) waits for room, up to ``OOM_RETRY_S``. Final results (which the store script
never overwrites) are also kept in a small per-process L1, so repeated reads of a finished
job cost no round trip. A key Postgres did not have either (a job still pending, or an
unknown id) is remembered for ``ABSENT_TTL_S``, so a client polling a pending job's state
costs Redis one GET per poll and Postgres at most one query per key per second, not one per
poll. In prefork pool processes the writes do not wait for Redis's answer
(``taskfleet.results.pipelining``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from functools import cached_property
from typing import Any

import redis
from cachetools import TTLCache
from celery import states
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from taskfleet.cache.l1 import MemoryTier
from taskfleet.config.settings import DEFAULT_RESULT_RETENTION_S
from taskfleet.observability.tracing import result_write_span, tracing_enabled
from taskfleet.results.pipelining import PipelinedScript
from taskfleet.results.stream import PERSIST_STREAM

RESULT_URL_SETTING = "taskfleet_redis_url"
DATABASE_URL_SETTING = "taskfleet_database_url"
DATABASE_URLS_SETTING = "taskfleet_database_urls"  # sharded: reads go to the key's shard
#: Seconds Postgres keeps a result (``Settings.result_retention``; see ``retention``).
RETENTION_SETTING = "taskfleet_result_retention"
#: Redis TTL of a result read back from Postgres (never more than the backend's own TTL).
BACKFILL_TTL_S = 300
#: A result write refused for memory is retried this long (backoff up to the second figure),
#: then raised: the fleet stalls while Redis is full instead of dropping results.
OOM_RETRY_S = 60.0
OOM_RETRY_MAX_WAIT_S = 2.0
#: Per-process L1 of final results: entries and seconds (final results never change).
RESULT_L1_ENTRIES = 4096
RESULT_L1_TTL_S = 300.0
#: Keys Postgres was asked for and did not have: how long that answer holds, and how many.
ABSENT_TTL_S = 1.0
ABSENT_ENTRIES = 65_536
log = logging.getLogger(__name__)
FINAL_STATE_MARKERS = tuple(f'"status": "{s}"' for s in ("SUCCESS", "FAILURE", "REVOKED"))

#: Keep a stored SUCCESS; otherwise write the meta, notify waiters, and queue the durable copy.
#: ARGV: meta, Redis TTL, durable retention (the stream's ``expires``; default: the TTL), and
#: for a traced job the write's ``traceparent`` (the stream entry carries it). A
#: full Redis (``noeviction``) refuses the first write (SET): no key, message or stream entry.
STORE_RESULT_LUA = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then return 0 end
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
if ARGV[4] then
  redis.call('XADD', KEYS[2], '*', 'key', KEYS[1], 'value', ARGV[1], 'expires', ARGV[3] or ARGV[2],
             'traceparent', ARGV[4])
else
  redis.call('XADD', KEYS[2], '*', 'key', KEYS[1], 'value', ARGV[1], 'expires', ARGV[3] or ARGV[2])
end
return 1
"""


class TaskfleetResultBackend(RedisBackend):  # type: ignore[misc]
    """Redis result backend whose writes also feed the Postgres persistence stream."""

    def __init__(self, app: Any = None, url: str | None = None, **kwargs: Any) -> None:
        url = url or app.conf.get(RESULT_URL_SETTING)
        super().__init__(app=app, url=url, **kwargs)
        self.durable_reader: Any = None
        self.l1 = MemoryTier(policy="lru", max_entries=RESULT_L1_ENTRIES, ttl=RESULT_L1_TTL_S)
        #: The clock of the absent-key memory (tests replace it).
        self.clock: Callable[[], float] = time.monotonic
        self._absent: TTLCache[str, bool] = TTLCache(
            maxsize=ABSENT_ENTRIES, ttl=ABSENT_TTL_S, timer=lambda: self.clock()
        )
        self._absent_lock = threading.Lock()  # cachetools caches are not thread-safe
        self._pipelined: PipelinedScript | None = None
        #: How long a write refused for memory is retried, and how often that happened.
        self.oom_retry_s = OOM_RETRY_S
        self.oom_refusals = 0
        #: Whether a traced job's write gets a span (:mod:`taskfleet.observability.tracing`).
        self.tracing = tracing_enabled()

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: str | None = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Store a state change in one round trip, never replacing a SUCCESS.

        Celery's own implementation reads the current meta and then writes (two round trips,
        and a race between them); the script does both atomically.
        """
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = bytes_to_str(task_id)
        value = self.encode(meta)
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError(
                "value too large for Redis backend", state=state, task_id=task_id
            )
        expires = self.failure_expires if state == states.FAILURE else self.expires
        keys = [self.get_key_for_task(task_id), PERSIST_STREAM]
        args = [value, int(expires or 0), self.retention]
        if not self.tracing:  # the hot path: no context manager per write
            self._send_store(keys, args)
            return result
        with result_write_span(True) as traceparent:
            if traceparent is not None:
                args.append(traceparent)
            self._send_store(keys, args)
        return result

    def _send_store(self, keys: list[str], args: list[Any]) -> None:
        """Pipelined in a prefork pool process, else one synchronous store."""
        if self._pipelined is not None:
            self._pipelined.send(keys, args)
        else:
            self._store_now(keys, args)

    def _store_now(self, keys: list[str], args: list[Any]) -> None:
        """One synchronous store, with the backend's retry policy; waits out a full Redis."""
        retrying = Retrying(
            retry=retry_if_exception_type(redis.exceptions.OutOfMemoryError),
            stop=stop_after_delay(self.oom_retry_s),
            wait=wait_exponential(multiplier=0.05, max=OOM_RETRY_MAX_WAIT_S),
            before_sleep=lambda state: self.count_refusal(
                bytes_to_str(keys[0]), state.attempt_number
            ),
            reraise=True,
        )
        retrying(self.ensure, self._store_script, (keys, args))

    def count_refusal(self, key: str, attempt: int) -> None:
        """A write of ``key`` was refused for memory: count it; log the 1st, 10th, 20th..."""
        self.oom_refusals += 1
        if attempt == 1 or attempt % 10 == 0:
            log.warning("Redis is full (maxmemory): result %s waits for room, try %d", key, attempt)

    @cached_property
    def retention(self) -> int:
        """Seconds Postgres keeps a result: the app's ``taskfleet_result_retention`` (a bare
        Celery app using this backend: the default), never less than the Redis TTL."""
        configured = self.app.conf.get(RETENTION_SETTING)
        retention = DEFAULT_RESULT_RETENTION_S if configured is None else int(configured)
        return max(retention, int(self.expires or 0))

    @cached_property
    def _store_script(self) -> Any:
        return self.client.register_script(STORE_RESULT_LUA)

    def pipeline_stores(self) -> None:
        """From now on, this process sends result writes without waiting for Redis's answer.

        For processes that run one job at a time (prefork pool processes): see
        :mod:`taskfleet.results.pipelining`. Reads in this process confirm the writes first.
        """
        if self._pipelined is None:
            self._pipelined = PipelinedScript(self.client, STORE_RESULT_LUA, self._store_now)

    def confirm_stores(self, close: bool = False) -> None:
        """Wait until every result write of this process has landed (``close``: and stop)."""
        pipelined = self._pipelined
        if pipelined is not None:
            if close:
                self._pipelined = None
                pipelined.close()
            else:
                pipelined.confirm()

    def mget(self, keys: list[bytes | str]) -> Any:
        """Stock ``mget``, after this process's own writes have landed."""
        self.confirm_stores()
        return super().mget(keys)

    def on_chord_part_return(self, *args: Any, **kwargs: Any) -> Any:
        """Stock chord bookkeeping, after this process's own writes have landed."""
        self.confirm_stores()
        return super().on_chord_part_return(*args, **kwargs)

    @property
    def backfill_ttl(self) -> int:
        """Redis TTL of a result read back from Postgres: short, and within the Redis TTL."""
        ttl = int(self.expires or 0)
        return min(ttl, BACKFILL_TTL_S) if ttl > 0 else BACKFILL_TTL_S

    def fetch_durable(self, key: str) -> Any:
        """The durable copy of ``key``: the one database, or (sharded) the key's shard."""
        if self.durable_reader is None:
            from taskfleet.results.durable import DurableReader

            self.durable_reader = DurableReader.from_conf(self.app.conf)
        return self.durable_reader.fetch(key)

    def _remember(self, key: str, value: str) -> None:
        if any(marker in value for marker in FINAL_STATE_MARKERS):
            self.l1.set_many({key: value})

    def delete(self, key: bytes | str) -> None:
        """Forget a result (``AsyncResult.forget``): Redis and this process's L1."""
        self.l1.delete([key.decode() if isinstance(key, bytes) else key])
        super().delete(key)

    def get(self, key: bytes | str) -> Any:
        """Read L1, then Redis; fall back to the durable copy when Redis no longer has it."""
        skey = key.decode() if isinstance(key, bytes) else key
        self.confirm_stores()
        cached = self.l1.get_text(skey)
        if cached is not None:
            return cached
        value = self.client.get(key)
        if value is not None:
            self._remember(skey, bytes_to_str(value))
            return value
        conf = self.app.conf
        if not (conf.get(DATABASE_URL_SETTING) or conf.get(DATABASE_URLS_SETTING)):
            return value

        from sqlalchemy.exc import SQLAlchemyError

        with self._absent_lock:
            if skey in self._absent:
                return None
        try:
            stored = self.fetch_durable(skey)
        except SQLAlchemyError:
            return None
        if stored is None:
            with self._absent_lock:
                self._absent[skey] = True
            return None
        text = self.encode(stored)
        self._remember(skey, text)
        with contextlib.suppress(redis.RedisError):  # back-fill Redis, never over newer
            self.client.set(skey, text, ex=self.backfill_ttl, nx=True)
        return text
