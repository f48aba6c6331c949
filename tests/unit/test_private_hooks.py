"""Every private name of kombu, Celery, billiard, redis-py and httpx that taskfleet relies on.

taskfleet's fast paths (the Redis transport's merged bookkeeping, the one-round-trip result
store, the exact pool resize commands) subclass library classes and reach into their private
state. A library upgrade that renames one of those names breaks taskfleet, often silently
(an override nobody calls any more, an assignment nobody reads). This module fails first,
naming the hook and the taskfleet file that uses it.

* :data:`HOOKS`, the table: one row per library name taskfleet reads, calls, overrides or
  replaces, each checked on the library class, on a real instance built without a network
  (:func:`_instance`), or, for attributes only ever set in ``__init__``, in its source.
  Overrides also compare their signature with the library's.
* :data:`OWN`: private names that are taskfleet's own. Those living in subclasses of library
  classes (or on library objects) must not exist in the library: a library that starts using
  the same name would have its state overwritten by taskfleet's, or the reverse.
* :func:`test_every_private_name_is_classified` scans taskfleet's source, so a new hook
  cannot be added without a row here.

A few library behaviours taskfleet copies rather than calls (BRPOP sent through
``send_command``, the priority sub-list key layout) are checked by the tests at the end.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import kombu
import pytest
import redis
from kombu.transport import redis as kombu_redis

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "taskfleet"
#: Libraries whose private names are tracked here.
LIBRARIES = ("kombu", "celery", "billiard", "redis", "httpx")

TRANSPORT = "taskfleet/routing/transport.py"
BOOKKEEPING = "taskfleet/routing/bookkeeping.py"
LATE_REPLIES = "taskfleet/results/late_replies.py"
BACKEND = "taskfleet/results/backend.py"
CONTROL = "taskfleet/scheduler/control.py"
CONSUMER = "taskfleet/resilience/consumer.py"
RUNTIME = "taskfleet/resilience/runtime.py"
LAUNCHER = "taskfleet/sandbox/launcher.py"
BASE_TASK = "taskfleet/tasks/base.py"
RECLAIM = "taskfleet/routing/reclaim.py"
RESTORE = "taskfleet/routing/restore.py"
DEFERRED_RESTORE = "taskfleet/routing/deferred_restore.py"
FETCH_CHANNEL = "taskfleet/routing/fetch_channel.py"
ATOMIC_FETCH = "taskfleet/routing/atomic_fetch.py"
TIMERS = "taskfleet/workers/timers.py"
REPLY_SKIP = "taskfleet/routing/reply_skip.py"
OUTBOUND = "taskfleet/outbound/transport.py"
STOCK_TRANSPORT = "taskfleet/routing/stock_transport.py"

#: The switches back to stock code, quoted in the rows below.
TRANSPORT_SWITCH = (
    "TASKFLEET_FAST_TRANSPORT=false runs stock kombu's Redis transport instead "
    "(taskfleet.routing.stock_transport, public API only); only event-loop consumers "
    "(prefork, solo) batch"
)
PIPELINE_SWITCH = "TASKFLEET_PIPELINE_RESULT_WRITES=false goes back to synchronous result writes"
ATOMIC_FETCH_SWITCH = "TASKFLEET_ATOMIC_FETCH=false goes back to kombu's BRPOP"
NO_RESIZE_SWITCH = (
    "no switch back: the autoscaler always sends taskfleet_pool_grow/taskfleet_pool_shrink"
)

Kind = Literal["method", "attribute", "override", "replaced"]
#: ``class``: on the library class. ``instance``: on a real instance (:func:`_instance`).
#: ``instance-dict``: in a real instance's ``__dict__`` (taskfleet reads ``obj.__dict__``).
#: ``init-source``: assigned in the source of an ``__init__`` in the class's MRO.
Where = Literal["class", "instance", "instance-dict", "init-source"]
VERBS: dict[Kind, str] = {
    "method": "called in",
    "attribute": "used in",
    "override": "overridden in",
    "replaced": "replaced in",
}


@dataclass(frozen=True)
class Hook:
    """One library name taskfleet relies on.

    Attributes:
        target: Dotted path of the library object that must still have ``name``.
        name: The attribute or method.
        kind: ``method`` (taskfleet calls it), ``attribute`` (reads or assigns it),
            ``override`` (a taskfleet subclass defines it and the library calls it),
            ``replaced`` (taskfleet assigns its own value over the library's).
        user: The taskfleet file relying on it.
        why: What for, and the switch back to the stock path if there is one.
        where: How the name is checked (see :data:`Where`).
        subclass: For overrides, ``module:Class`` of the taskfleet subclass; its signature
            must match the library's, since it passes its arguments through.
        call: For called methods, ``(positional, keywords)`` as taskfleet passes them.
    """

    target: str
    name: str
    kind: Kind
    user: str
    why: str
    where: Where = "class"
    subclass: str = ""
    call: tuple[int, tuple[str, ...]] | None = None

    @property
    def path(self) -> str:
        """``module.Class.name``."""
        return f"{self.target}.{self.name}"

    def complaint(self, problem: str, detail: str = "") -> str:
        """The failure message: the hook, the taskfleet file, and why taskfleet needs it."""
        where = f"{VERBS[self.kind]} {self.user}"
        tail = f": {detail}" if detail else ""
        return f"{self.path} {problem} ({where}){tail}. taskfleet needs it for: {self.why}"


HOOKS: list[Hook] = [
    # --- kombu: the Redis transport (routing/transport.py, routing/bookkeeping.py) ---
    Hook(
        "kombu.transport.redis.Channel",
        "_create_client",
        "override",
        TRANSPORT,
        "one reused redis.Redis per channel and pool instead of one per ack and delivery; "
        + TRANSPORT_SWITCH,
        subclass="taskfleet.routing.transport:Channel",
    ),
    Hook(
        "kombu.transport.redis.Channel",
        "_create_client",
        "method",
        BOOKKEEPING,
        "BatchedQoS._execute: the synchronous pipeline of unacked writes when no event loop "
        "drives the transport",
        call=(0, ()),
    ),
    Hook(
        "kombu.transport.redis.Channel",
        "_connparams",
        "override",
        TRANSPORT,
        "wraps the fetch (asynchronous) pool's connection_class so BRPOP carries the "
        "bookkeeping; " + TRANSPORT_SWITCH,
        subclass="taskfleet.routing.transport:Channel",
    ),
    Hook(
        "kombu.transport.redis.Channel",
        "_brpop_start",
        "override",
        TRANSPORT,
        "unacked records and removals ride in the same write as the next BRPOP; "
        + TRANSPORT_SWITCH,
        subclass="taskfleet.routing.transport:Channel",
    ),
    Hook(
        "kombu.transport.redis.Channel",
        "_brpop_read",
        "override",
        TRANSPORT,
        "the BRPOP reply confirms every write sent before it (fetch_answered); " + TRANSPORT_SWITCH,
        subclass="taskfleet.routing.transport:Channel",
    ),
    Hook(
        "kombu.transport.virtual.base.Transport",
        "_deliver",
        "method",
        TRANSPORT,
        "the rest of a solo worker's fetch batch is delivered as kombu's BRPOP reader "
        "delivers a message (to the queue's consumer, or rejected back if it has none); "
        "TASKFLEET_FETCH_BATCH=1 or " + TRANSPORT_SWITCH,
        call=(2, ()),
    ),
    Hook(
        "kombu.transport.redis.Channel",
        "_on_connection_disconnect",
        "override",
        TRANSPORT,
        "writes a dropped fetch connection never confirmed are queued again (fetch_lost); "
        + TRANSPORT_SWITCH,
        subclass="taskfleet.routing.transport:Channel",
    ),
    Hook(
        "kombu.transport.redis.Channel",
        "_in_poll",
        "attribute",
        TRANSPORT,
        "send_on_fetch_connection(idle_only=True) refuses while a BRPOP is waiting",
    ),
    Hook(
        "kombu.transport.redis.Channel",
        "_qos",
        "attribute",
        TRANSPORT,
        "Channel._our_qos reads __dict__['_qos'] (set by virtual.Channel.__init__) so a "
        "check never creates the QoS",
        where="instance-dict",
    ),
    Hook(
        "kombu.transport.redis.Channel",
        "client",
        "attribute",
        TRANSPORT,
        "a cached_property read through __dict__['client'] so checks never create the "
        "fetch client; were it a plain property, fetch_lost would silently never run",
        where="instance-dict",
    ),
    Hook(
        "kombu.transport.redis.MultiChannelPoller",
        "_channels",
        "attribute",
        TRANSPORT,
        "Poller.on_poll_start flushes the records of every channel the poller serves",
        where="instance",
    ),
    Hook(
        "kombu.transport.redis.Transport",
        "cycle",
        "replaced",
        TRANSPORT,
        "Transport.__init__ replaces kombu's MultiChannelPoller with taskfleet's Poller",
        where="instance-dict",
    ),
    Hook(
        "kombu.transport.redis.QoS",
        "_delivered",
        "attribute",
        BOOKKEEPING,
        "BatchedQoS._still_delivered: unconfirmed records of jobs not acked since",
        where="instance",
    ),
    Hook(
        "kombu.transport.redis.QoS",
        "_dirty",
        "attribute",
        BOOKKEEPING,
        "acked tags kombu keeps in _delivered until its next flush: _still_delivered "
        "never sends their records again",
        where="instance",
    ),
    Hook(
        "kombu.transport.redis.QoS",
        "_remove_from_indices",
        "method",
        BOOKKEEPING,
        "return_undelivered puts a batch's unrun rest back as kombu's restore_by_tag does, "
        "in the same transaction, only without the redelivered marks; "
        "TASKFLEET_FETCH_BATCH=1 fetches no batches",
        call=(2, ()),
    ),
    Hook(
        "kombu.transport.redis.QoS",
        "_flush",
        "method",
        BOOKKEEPING,
        "restore_unacked forgets acked deliveries before restoring by tag (a tag handed "
        "over by a reclaimer is another consumer's record now)",
        call=(0, ()),
    ),
    Hook(
        "kombu.transport.redis.Channel.Message",
        "_raw",
        "attribute",
        BOOKKEEPING,
        "the unacked hash value [message._raw, exchange, routing_key], as kombu writes it "
        "and restores it; " + TRANSPORT_SWITCH,
        where="instance",
    ),
    Hook(
        "kombu.transport.redis.Channel",
        "_do_restore_message",
        "method",
        RESTORE,
        "a dead consumer's deliveries (and a batch's unrun rest, without the redelivered "
        "marks) are restored exactly as kombu's restore_by_tag would (redelivered marks, "
        "exchange lookup, priority sub-list, push side), its pushes recorded and moved by "
        "one Lua call; TASKFLEET_FAST_TRANSPORT=false (or "
        "TASKFLEET_RESILIENCE_FAST_RECLAIM=false) runs no reclaimer: kombu's "
        "visibility-timeout restore alone",
        call=(4, ("leftmost",)),
    ),
    Hook(
        "kombu.transport.redis.Channel",
        "_create_client",
        "method",
        DEFERRED_RESTORE,
        "restore_deferred: the new channel's client restores what a channel closed while "
        "Redis was down could not",
        call=(0, ()),
    ),
    Hook(
        "kombu.transport.redis.Channel",
        "_do_restore_message",
        "method",
        DEFERRED_RESTORE,
        "a delivery whose unacked record never landed is put back from the message the "
        "worker held, exactly as kombu's restore would",
        call=(4, ()),
    ),
    Hook(
        "kombu.transport.redis.Channel.Message",
        "_raw",
        "attribute",
        DEFERRED_RESTORE,
        "held(): the payload of each delivery a closing channel could not restore",
        where="instance",
    ),
    # --- kombu: atomic fetch (routing/fetch_channel.py) ---
    Hook(
        "kombu.transport.redis.Channel",
        "_poll_error",
        "override",
        FETCH_CHANNEL,
        "an error event on the change notifications' connection drops it (kombu would "
        "read a reply from the fetch connection); " + ATOMIC_FETCH_SWITCH,
        subclass="taskfleet.routing.fetch_channel:FetchScriptChannel",
    ),
    Hook(
        "kombu.transport.redis.MultiChannelPoller",
        "_register",
        "method",
        FETCH_CHANNEL,
        "the change notifications' connection is polled like kombu's own (event type WAIT); "
        + ATOMIC_FETCH_SWITCH,
        call=(3, ()),
    ),
    Hook(
        "kombu.transport.redis.MultiChannelPoller",
        "_chan_to_sock",
        "attribute",
        FETCH_CHANNEL,
        "_drop_fetch removes the WAIT registration kombu's _register made",
        where="instance",
    ),
    Hook(
        "kombu.transport.redis.MultiChannelPoller",
        "_fd_to_chan",
        "attribute",
        FETCH_CHANNEL,
        "_drop_fetch removes the WAIT registration kombu's _register made",
        where="instance",
    ),
    Hook(
        "kombu.transport.redis.MultiChannelPoller",
        "_fd_to_chan",
        "attribute",
        TRANSPORT,
        "Poller.on_readable hands WAIT events to their channel even when it cannot consume",
        where="instance",
    ),
    Hook(
        "kombu.transport.redis.MultiChannelPoller",
        "_unregister_from_poll",
        "method",
        FETCH_CHANNEL,
        "stops polling the notifications' fd (the event loop's remove_reader under a hub)",
        call=(1, ()),
    ),
    Hook(
        "redis.connection.Connection",
        "_sock",
        "attribute",
        FETCH_CHANNEL,
        "None while disconnected (set up on a connected fetch link); its identity tells "
        "a reconnect, which the server's tracking state does not survive",
        where="instance",
    ),
    Hook(
        "redis.connection.Connection",
        "_parser",
        "attribute",
        ATOMIC_FETCH,
        "the change waiter sets its parser's invalidation push handler (a public method of "
        "the parser), so that RESP3 invalidations name their keys; without it every "
        "notification wakes the channel; " + ATOMIC_FETCH_SWITCH,
        where="instance",
    ),
    # --- redis-py: raw connections (transport.py, results/late_replies.py) ---
    Hook(
        "redis.connection.Connection",
        "_sock",
        "attribute",
        TRANSPORT,
        "None while disconnected: send_on_fetch_connection never writes on a closed link",
        where="instance",
    ),
    Hook(
        "redis.connection.Connection",
        "_sock",
        "attribute",
        LATE_REPLIES,
        "None while disconnected: owed replies of a closed link are reported, not read "
        "(result writes: " + PIPELINE_SWITCH + "; transport bookkeeping: " + TRANSPORT_SWITCH + ")",
        where="instance",
    ),
    Hook(
        "redis.connection.Connection",
        "__dict__",
        "attribute",
        TRANSPORT,
        "per-connection flags live on the instance (fetch_prefix, and "
        "_taskfleet_skips_replies in bookkeeping.py): no __slots__ allowed",
        where="instance",
    ),
    # --- Celery: worker consumer, prefork pool, Redis result backend ---
    Hook(
        "celery.worker.consumer.consumer.Consumer",
        "_update_prefetch_count",
        "method",
        CONTROL,
        "prefetch follows the pool size after taskfleet_pool_grow/shrink; " + NO_RESIZE_SWITCH,
        call=(1, ()),
    ),
    Hook(
        "celery.concurrency.prefork.TaskPool",
        "_pool",
        "attribute",
        CONTROL,
        "the billiard pool behind Celery's pool (None or a gevent pool elsewhere)",
    ),
    Hook(
        "celery.backends.redis.RedisBackend",
        "_store_result",
        "override",
        BACKEND,
        "one-round-trip Lua store that never replaces a SUCCESS and feeds the Postgres "
        "stream (" + PIPELINE_SWITCH + ", but the override itself has no switch)",
        subclass="taskfleet.results.backend:TaskfleetResultBackend",
    ),
    Hook(
        "celery.backends.redis.RedisBackend",
        "_get_result_meta",
        "method",
        BACKEND,
        "the result meta exactly as Celery stores it",
        call=(0, ("result", "state", "traceback", "request")),
    ),
    Hook(
        "celery.backends.redis.RedisBackend",
        "_MAX_STR_VALUE_SIZE",
        "attribute",
        BACKEND,
        "the same size refusal as Celery's own _store_result",
    ),
    # Public handlers, but replaced per instance: a renamed one would be replaced silently
    # (on_decode_error is only assigned, never read first).
    Hook(
        "celery.worker.consumer.consumer.Consumer",
        "on_unknown_message",
        "replaced",
        CONSUMER,
        "dead-letters malformed messages (taskfleet's DLQ)",
        call=(2, ()),
    ),
    Hook(
        "celery.worker.consumer.consumer.Consumer",
        "on_unknown_task",
        "replaced",
        CONSUMER,
        "dead-letters messages for unknown tasks",
        call=(3, ()),
    ),
    Hook(
        "celery.worker.consumer.consumer.Consumer",
        "on_invalid_task",
        "replaced",
        CONSUMER,
        "dead-letters invalid and disallowed (pickle) messages",
        call=(3, ()),
    ),
    Hook(
        "celery.worker.consumer.consumer.Consumer",
        "on_decode_error",
        "replaced",
        CONSUMER,
        "dead-letters undecodable bodies and rejects them (stock Celery acks)",
        call=(2, ()),
    ),
    Hook(
        "celery.worker.consumer.consumer.Consumer",
        "create_task_handler",
        "replaced",
        CONSUMER,
        "the payload size limit, checked before any task code runs",
    ),
    # --- billiard: the prefork pool behind Celery's (scheduler/control.py) ---
    Hook(
        "billiard.pool.Pool",
        "_iterinactive",
        "method",
        CONTROL,
        "idle processes for taskfleet_pool_shrink (when missing, control.py falls back to "
        "Celery's inexact pool.shrink); " + NO_RESIZE_SWITCH,
        call=(0, ()),
    ),
    Hook(
        "billiard.pool.Pool",
        "_pool",
        "attribute",
        CONTROL,
        "the pool's processes, counted without those already told to stop",
        where="init-source",
    ),
    Hook(
        "billiard.pool.Pool",
        "_processes",
        "attribute",
        CONTROL,
        "the pool's target size, lowered by one per stopped process (as Pool.shrink does)",
        where="init-source",
    ),
    Hook(
        "billiard.pool.Pool",
        "_putlock",
        "attribute",
        CONTROL,
        "the put semaphore, shrunk with the pool (as Pool.shrink does)",
        where="init-source",
    ),
    Hook(
        "kombu.asynchronous.semaphore.LaxBoundedSemaphore",
        "shrink",
        "method",
        CONTROL,
        "pool._putlock.shrink(): the semaphore Celery hands billiard under an event loop",
        call=(0, ()),
    ),
    # --- httpx: the outbound transport (outbound/transport.py) ---
    Hook(
        "httpx.HTTPTransport",
        "_pool",
        "replaced",
        OUTBOUND,
        "the connection pool, rebuilt on the network backend that vets every address it "
        "connects to (no switch back: webhooks always go through the outbound policy)",
        where="init-source",
    ),
    # --- kombu: the event loop's timer (workers/timers.py) ---
    Hook(
        "kombu.asynchronous.timer.Timer",
        "_queue",
        "attribute",
        TIMERS,
        "the heap purge_cancelled filters in place: cancelled time-limit timers would "
        "otherwise stay in the prefork parent until they come due (TASKFLEET_SOFT_TIME_LIMIT)",
        where="init-source",
    ),
    Hook(
        "billiard.pool.LaxBoundedSemaphore",
        "shrink",
        "method",
        CONTROL,
        "pool._putlock.shrink(): billiard's own semaphore (pools without an event loop)",
        call=(0, ()),
    ),
    Hook(
        "billiard.process.BaseProcess",
        "_controlled_termination",
        "attribute",
        CONTROL,
        "set by terminate_controlled: skips processes stopping but not yet reaped",
        where="instance",
    ),
]


def _hook_id(hook: Hook) -> str:
    twins = [h for h in HOOKS if h.path == hook.path]
    return hook.path if len(twins) == 1 else f"{hook.path}@{Path(hook.user).stem}"


@dataclass(frozen=True)
class Own:
    """A private name that is taskfleet's own (or the standard library's), not a hook.

    Attributes:
        user: The taskfleet file using it.
        name: The name.
        shadows: The library class taskfleet stores or defines it on (a subclass, or its
            instances); the library must not use the same name. Empty for names of
            taskfleet's own classes.
    """

    user: str
    name: str
    shadows: str = ""


def _own(user: str, shadows: str, *names: str) -> list[Own]:
    return [Own(user, name, shadows) for name in names]


OWN: list[Own] = [
    *_own(
        TRANSPORT,
        "kombu.transport.redis.Channel",
        "_ascending_steps",
        "_clients",
        "_our_qos",
        "_step",
        "_step_of",
        "_deliver_extras",
        "_read_fetched",
        "_return_extras",
        "delivering",
        "send_on_fetch_connection",
        "flush_bookkeeping",
    ),
    *_own(
        FETCH_CHANNEL,
        "kombu.transport.redis.Channel",
        "_fetch",
        "_fetch_sent",
        "_fetch_refused_until",
        "_fetched",
        "_queue_of",
        "_queue_keys",
        "_watched_queues",
        "delivery_kind",
        "extra_deliveries",
        "extra_queue",
        "_atomic",
        "_prefixes",
        "_on_change",
        "_drop_fetch",
        "_fetch_unanswered",
        "atomic_fetch",
        "delivery_recorded",
    ),
    *_own(
        TRANSPORT,
        "kombu.transport.redis.Channel",
        "_atomic",
        "_drop_fetch",
        "_fetch",
        "_fetch_sent",
        "_fetch_unanswered",
        "_prefixes",
    ),
    *_own(TRANSPORT, "kombu.transport.redis.Transport", "_flush_acks", "batch_acks"),
    # The stock path's only name of its own (public: it adds no private hook).
    *_own(STOCK_TRANSPORT, "kombu.transport.redis.Channel", "ascending_priority_steps"),
    *_own(TRANSPORT, "redis.connection.Connection", "fetch_prefix"),
    *_own(REPLY_SKIP, "redis.connection.Connection", "_taskfleet_skips_replies"),
    *_own(
        BOOKKEEPING,
        "kombu.transport.redis.QoS",
        "_pending_acks",
        "_unsent_records",
        "_unconfirmed_records",
        "_unconfirmed_removals",
        "_writer",
        "_owner_tags",
        "_stamps",
        "_stamped",
        "_disown",
        "_put_back",
        "_settle",
        "_take_records",
        "_still_delivered",
        "_take_removals",
        "_removals",
        "_execute",
        "_send_on_writer",
        "_confirm_writer",
        "_release_writer",
        "batching",
        "has_fetch_prefix",
        "take_fetch_prefix",
        "flush_acks",
        "flush_records",
        "fetch_answered",
        "fetch_lost",
    ),
    *_own(
        BACKEND,
        "celery.backends.redis.RedisBackend",
        "_absent",
        "_absent_lock",
        "_database",
        "_engine",
        "_pipelined",
        "_remember",
        "_send_store",
        "_store_now",
        "_store_script",
        "l1",
        "clock",
        "pipeline_stores",
        "confirm_stores",
    ),
    *_own(
        BASE_TASK,
        "celery.app.task.Task",
        "_active_middleware",
        "_call_through_middleware",
        "active_middleware",
        "pool",
    ),
    Own(RUNTIME, "_deaf"),  # EventFeed._deaf, called on feeds of this process
    # Standard library, not checked (see the comment at the end of this module).
    Own(LAUNCHER, "_exit"),
    Own(LAUNCHER, "_run_exitfuncs"),
    Own(LAUNCHER, "_shutdown"),
]


# --- resolving library objects and building real instances without a network ---


@functools.cache
def _resolve(dotted: str) -> Any:
    """The object at ``dotted``: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"no module of {dotted} imports")


def _resolve_taskfleet(spec: str) -> Any:
    module, _, qualname = spec.partition(":")
    obj: Any = importlib.import_module(module)
    for attr in qualname.split("."):
        obj = getattr(obj, attr)
    return obj


@contextmanager
def _stock_redis_channel() -> Iterator[Any]:
    """A stock kombu Redis channel that never connected (its start-up PING is stubbed)."""
    connection = kombu.Connection("redis://127.0.0.1:1/0", transport=kombu_redis.Transport)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(redis.Redis, "ping", lambda self, **_: True)
            channel = kombu_redis.Channel(connection.transport)
        _ = channel.client  # the cached property, as kombu evaluates it on first use
    except Exception as exc:
        pytest.fail(
            "kombu.transport.redis.Channel can no longer be built without a network (its "
            f"start-up PING stubbed): {exc!r}. The checks on real kombu instances need one; "
            f"the transport taskfleet subclasses in {TRANSPORT} changed how it starts."
        )
    try:
        yield channel
    finally:
        channel._in_poll = False  # a test may leave a fake BRPOP connection behind
        channel.client.connection = None
        channel.close()
        connection.release()


def _instance(target: str, channel: Callable[[], Any]) -> Any:
    """A real instance of ``target``, built without a network (``channel`` builds a stock one)."""
    import billiard

    def message() -> Any:
        payload = {"properties": {"delivery_tag": "tag", "delivery_info": {}}}
        return channel().Message(payload, channel=channel())

    factories: dict[str, Callable[[], Any]] = {
        "kombu.transport.redis.Channel": channel,
        "kombu.transport.redis.Transport": lambda: channel().connection,
        "kombu.transport.redis.MultiChannelPoller": kombu_redis.MultiChannelPoller,
        "kombu.transport.redis.QoS": lambda: kombu_redis.QoS(channel()),
        "kombu.transport.redis.Channel.Message": message,
        "redis.connection.Connection": redis.connection.Connection,
        "billiard.process.BaseProcess": billiard.Process,
    }
    return factories[target]()


@pytest.fixture(scope="module")
def stock_channel() -> Iterator[Callable[[], Any]]:
    """The stock kombu Redis channel of the table's instance checks, built on first use.

    Lazily, so that a kombu whose channel cannot be built fails only the instance checks.
    """
    with ExitStack() as stack:
        yield functools.cache(lambda: stack.enter_context(_stock_redis_channel()))


def _assigned_in_init(cls: type, name: str) -> bool:
    pattern = re.compile(rf"\bself\.{re.escape(name)}\s*(=(?!=)|[-+]=)")
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is not None and pattern.search(inspect.getsource(init)):
            return True
    return False


@functools.cache
def _class_sources(module: str) -> dict[str, str]:
    """Source of every class in ``module`` by qualified name (one parse per module)."""
    source = inspect.getsource(importlib.import_module(module))
    found: dict[str, str] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                found[prefix + child.name] = ast.get_source_segment(source, child) or ""
                visit(child, f"{prefix}{child.name}.")

    visit(ast.parse(source), "")
    return found


def _class_source(cls: type) -> str:
    return _class_sources(cls.__module__).get(cls.__qualname__) or inspect.getsource(cls)


def _params(func: Any) -> list[tuple[str, Any]]:
    return [(p.name, p.kind) for p in inspect.signature(func).parameters.values()]


# --- the table ---


@pytest.mark.parametrize("hook", HOOKS, ids=_hook_id)
def test_hook_still_exists(hook: Hook, stock_channel: Callable[[], Any]) -> None:
    """The library still has the name, in the shape taskfleet uses it."""
    try:
        target = _resolve(hook.target)
    except (ImportError, AttributeError) as exc:
        pytest.fail(hook.complaint("is gone", f"{hook.target} itself: {exc!r}"))

    if hook.where == "class":
        present = hasattr(target, hook.name)
    elif hook.where == "init-source":
        present = _assigned_in_init(target, hook.name)
    else:
        obj = _instance(hook.target, stock_channel)
        present = (
            hook.name in vars(obj) if hook.where == "instance-dict" else hasattr(obj, hook.name)
        )
    if not present:
        how = {
            "class": f"{hook.target} has no attribute {hook.name}",
            "instance": f"a real {hook.target} instance has no attribute {hook.name}",
            "instance-dict": f"{hook.name!r} is not in a real instance's __dict__",
            "init-source": f"no __init__ in {hook.target}'s MRO assigns self.{hook.name} "
            "(checked in the source: the pool forks processes when built)",
        }[hook.where]
        pytest.fail(hook.complaint("is gone", how))

    if hook.kind in ("method", "override", "replaced") and hook.where == "class":
        library = inspect.getattr_static(target, hook.name)
        if not callable(getattr(target, hook.name)):
            pytest.fail(hook.complaint("is no longer a method", repr(library)))
        if hook.call is not None:
            positional, keywords = hook.call
            try:
                inspect.signature(getattr(target, hook.name)).bind(
                    None, *[None] * positional, **dict.fromkeys(keywords)
                )
            except TypeError as exc:
                sig = inspect.signature(getattr(target, hook.name))
                pytest.fail(
                    hook.complaint(
                        "no longer takes taskfleet's arguments",
                        f"{positional} positional + {list(keywords)} vs {sig}: {exc}",
                    )
                )
    if hook.subclass:
        ours = getattr(_resolve_taskfleet(hook.subclass), hook.name)
        theirs = getattr(target, hook.name)
        if _params(ours) != _params(theirs):
            pytest.fail(
                hook.complaint(
                    "changed its signature",
                    f"library {inspect.signature(theirs)} vs {hook.subclass}."
                    f"{hook.name}{inspect.signature(ours)}",
                )
            )


OWN_SHADOWING = [own for own in OWN if own.shadows]


@pytest.mark.parametrize("own", OWN_SHADOWING, ids=lambda o: f"{o.shadows}.{o.name}")
def test_own_name_is_not_used_by_the_library(own: Own) -> None:
    """taskfleet's own names on library classes must not collide with the library's."""
    cls = _resolve(own.shadows)
    pattern = re.compile(rf"(\.|['\"]){re.escape(own.name)}\b")
    users = [
        klass.__qualname__
        for klass in cls.__mro__
        if klass.__module__.split(".")[0] in LIBRARIES
        and (own.name in vars(klass) or pattern.search(_class_source(klass)))
    ]
    assert not users, (
        f"{own.shadows}.{own.name} is now used by the library (in {', '.join(users)}); "
        f"taskfleet uses the same name for its own state in {own.user}: rename taskfleet's"
    )


# --- the scan that keeps the table complete ---


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_names(source: str, filename: str) -> Iterator[tuple[int, str]]:
    """``(line, name)`` of every private name in ``source`` that could be a library's.

    Counted: ``obj._x`` on anything but ``self``/``cls``; inside a class that subclasses a
    library class, also ``self._x`` and its private methods and class attributes; private
    names given as strings to ``getattr``/``hasattr``/``setattr``/``delattr`` and to
    ``obj.__dict__.get/pop/setdefault``; private names imported from a library.
    """
    tree = ast.parse(source, filename)
    imported: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                imported[(alias.asname or alias.name).split(".")[0]] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                imported[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                if node.module.split(".")[0] in LIBRARIES and _is_private(alias.name):
                    yield node.lineno, alias.name

    def from_library(base: ast.expr) -> bool:
        while isinstance(base, ast.Attribute):
            base = base.value
        return isinstance(base, ast.Name) and imported.get(base.id, "").split(".")[0] in LIBRARIES

    in_subclass: set[int] = set()
    for cls in ast.walk(tree):
        if not isinstance(cls, ast.ClassDef) or not any(from_library(b) for b in cls.bases):
            continue
        in_subclass.update(id(node) for node in ast.walk(cls))
        for stmt in cls.body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                names = [stmt.name]
            elif isinstance(stmt, ast.Assign):
                names = [t.id for t in stmt.targets if isinstance(t, ast.Name)]
            elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                names = [stmt.target.id]
            else:
                names = []
            yield from ((stmt.lineno, name) for name in names if _is_private(name))

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            on_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            if not on_self or id(node) in in_subclass:
                yield node.lineno, node.attr
        elif isinstance(node, ast.Call):
            func, named = node.func, None
            if isinstance(func, ast.Name) and func.id in (
                "getattr",
                "hasattr",
                "setattr",
                "delattr",
            ):
                named = node.args[1] if len(node.args) > 1 else None
            elif (
                isinstance(func, ast.Attribute)
                and func.attr in ("get", "pop", "setdefault")
                and isinstance(func.value, ast.Attribute)
                and func.value.attr == "__dict__"
            ):
                named = node.args[0] if node.args else None
            if (
                isinstance(named, ast.Constant)
                and isinstance(named.value, str)
                and _is_private(named.value)
            ):
                yield node.lineno, named.value


@functools.cache
def _scan() -> dict[tuple[str, str], list[int]]:
    found: dict[tuple[str, str], list[int]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        user = path.relative_to(ROOT).as_posix()
        for line, name in _private_names(path.read_text(encoding="utf-8"), user):
            found.setdefault((user, name), []).append(line)
    return found


def test_every_private_name_is_classified() -> None:
    """A private name taskfleet uses is a hook in ``HOOKS`` or taskfleet's own in ``OWN``."""
    known = {(h.user, h.name) for h in HOOKS} | {(o.user, o.name) for o in OWN}
    unknown = {key: lines for key, lines in _scan().items() if key not in known}
    assert not unknown, (
        "private names not classified in tests/unit/test_private_hooks.py: "
        + "; ".join(f"{user}:{lines[0]} {name}" for (user, name), lines in sorted(unknown.items()))
        + ". A library's private name goes in HOOKS; taskfleet's own goes in OWN (with the "
        "library class it lives on, if any)."
    )


def test_no_stale_rows() -> None:
    """Every private hook in the table is still used where the table says."""
    found = _scan()
    stale = [
        f"{_hook_id(h)} ({h.user})"
        for h in HOOKS
        if _is_private(h.name) and (h.user, h.name) not in found
    ]
    assert not stale, f"HOOKS rows whose file no longer uses the name: {', '.join(stale)}"


# --- library behaviour taskfleet copies rather than calls ---


def test_fetch_connections_are_built_from_connparams_connection_class() -> None:
    """``Channel._connparams`` (wrapped in transport.py) names the pool's connection class."""
    with _stock_redis_channel() as channel:
        params = channel._connparams(asynchronous=True)
    connection_class = params.get("connection_class")
    is_connection_class = isinstance(connection_class, type) and issubclass(
        connection_class, redis.connection.AbstractConnection
    )
    assert is_connection_class, (
        "kombu.transport.redis.Channel._connparams(asynchronous=True) no longer returns a "
        "redis connection class under 'connection_class' (wrapped in "
        f"{TRANSPORT}): got {connection_class!r}. {TRANSPORT_SWITCH}"
    )


class _RecordingConnection:
    """Stands in for the fetch connection: records what kombu sends on it."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def send_command(self, *args: Any, **_: Any) -> None:
        self.sent.append(args)

    def disconnect(self, *_: Any, **__: Any) -> None:
        """Nothing to close."""


def test_brpop_is_sent_through_the_connections_send_command() -> None:
    """kombu's ``_brpop_start`` sends BRPOP with ``connection.send_command``.

    transport.py's ``_PrefixedSends.send_command`` puts the waiting bookkeeping in front of
    it; sent any other way, the bookkeeping would go out alone (correct, one write more).
    """
    with _stock_redis_channel() as channel:
        channel.basic_consume("q", no_ack=True, callback=lambda _: None, consumer_tag="t")
        recorder = _RecordingConnection()
        channel.client.connection = recorder
        channel._brpop_start(1)
    commands = [args[0] for args in recorder.sent]
    assert commands == ["BRPOP"], (
        "kombu.transport.redis.Channel._brpop_start no longer sends BRPOP through "
        f"client.connection.send_command (hooked by _PrefixedSends in {TRANSPORT}): "
        f"sent {commands}"
    )


def test_priority_keys_match_kombus_layout() -> None:
    """depth.py computes kombu's sub-list keys itself (``Channel._q_for_pri``, ``sep``)."""
    from taskfleet.routing.depth import redis_priority_key
    from taskfleet.routing.transport import ALL_PRIORITY_STEPS

    with _stock_redis_channel() as channel:
        channel.priority_steps = ALL_PRIORITY_STEPS  # as taskfleet.app configures it
        theirs = [channel._q_for_pri("q", step) for step in ALL_PRIORITY_STEPS]
    ours = [redis_priority_key("q", step) for step in ALL_PRIORITY_STEPS]
    assert ours == theirs, (
        "kombu.transport.redis.Channel._q_for_pri/sep changed the priority sub-list keys "
        f"that taskfleet/routing/depth.py mirrors: kombu {theirs!r}, taskfleet {ours!r}"
    )


# stdlib, not checked (private names of the standard library taskfleet uses; listed in OWN
# only so the scan accepts them):
#   taskfleet/sandbox/launcher.py: os._exit, atexit._run_exitfuncs,
#   sys.modules["threading"]._shutdown (threading._shutdown)


def test_the_stock_path_reads_the_most_urgent_sublist_first() -> None:
    """The stock path (``TASKFLEET_FAST_TRANSPORT=false``) changes kombu through public API
    only: the ``priority_steps`` transport option, reordered, and ``priority()``, which
    kombu's BRPOP must still map each step through, in the order of ``priority_steps``."""
    from taskfleet.routing.depth import redis_priority_key
    from taskfleet.routing.priority import ALL_PRIORITY_STEPS
    from taskfleet.routing.stock_transport import Transport

    options = {"priority_steps": ALL_PRIORITY_STEPS}
    connection = kombu.Connection(
        "redis://127.0.0.1:1/0", transport=Transport, transport_options=options
    )
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(redis.Redis, "ping", lambda self, **_: True)
            channel = connection.default_channel
        channel.basic_consume("q", no_ack=True, callback=lambda _: None, consumer_tag="t")
        recorder = _RecordingConnection()
        channel.client.connection = recorder
        channel._brpop_start(1)
        channel._in_poll = False  # no BRPOP reply to read at close
        channel.client.connection = None
    finally:
        connection.release()
    (brpop,) = recorder.sent
    expected = [redis_priority_key("q", step) for step in reversed(ALL_PRIORITY_STEPS)]
    assert list(brpop[1:-1]) == expected, (
        "kombu.transport.redis.Channel._brpop_start no longer names the sub-lists in the "
        f"order of priority_steps (reversed in {STOCK_TRANSPORT}): sent {brpop!r}"
    )
