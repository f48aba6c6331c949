"""Celery message protocol v2, built directly, for publishing many jobs in few round trips.

``apply_async`` spends most of a publish in Python (argument reprs, a producer per call,
routing lookups). For batches taskfleet builds the same message a Celery producer would
(protocol v2, JSON body) and hands it to the broker in one pipeline (Redis) or one
transaction (RabbitMQ). The format is the public contract for producers in other languages;
``docs`` in the README show it.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import os
import re
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

JSON_CONTENT_TYPE = "application/json"
ORIGIN = f"taskfleet@{socket.gethostname()}:{os.getpid()}"
EMPTY_EMBED: dict[str, None] = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1d3c52-6e0b-4b59-9d0e-7a2a4c1f0e11")
#: The protocol-v2 headers that are the same for every job taskfleet publishes.
STATIC_HEADERS: dict[str, Any] = {
    "lang": "py",
    "shadow": None,
    "expires": None,
    "group": None,
    "group_index": None,
    "retries": 0,
    "timelimit": [None, None],
    "parent_id": None,
    "argsrepr": "",
    "kwargsrepr": "",
    "origin": ORIGIN,
    "ignore_result": False,
    "replaced_task_nesting": 0,
    "stamped_headers": None,
    "stamps": {},
}
#: orjson options that keep the stdlib ``json`` semantics taskfleet promises: non-str keys
#: become strings, and datetimes/dataclasses are *not* serialised implicitly.
ORJSON_OPTIONS = (
    orjson.OPT_NON_STR_KEYS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def encode_json(value: Any) -> bytes:
    """Compact JSON: orjson (3-4x faster than ``json``), falling back to ``json`` for what
    orjson refuses but ``json`` accepts (integers beyond 64 bits).

    Raises:
        TypeError: the value is not JSON-serialisable.
    """
    try:
        return orjson.dumps(value, option=ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        return json.dumps(value, separators=(",", ":")).encode()


_TAG_PREFIX = uuid.uuid4().hex
_tag_counter = itertools.count()


def _new_tag_prefix() -> None:
    """A forked process (prefork pool child) must not reuse its parent's tag sequence."""
    global _TAG_PREFIX, _tag_counter
    _TAG_PREFIX = uuid.uuid4().hex
    _tag_counter = itertools.count()


os.register_at_fork(after_in_child=_new_tag_prefix)


def next_delivery_tag() -> str:
    """A delivery tag unique across processes (kombu keys its unacked hash by it): a random
    per-process prefix and a counter, ~10x cheaper than a uuid4 per message."""
    return f"{_TAG_PREFIX}-{next(_tag_counter)}"


#: bytes.translate tables that set a random UUID's version (4) and variant (RFC 4122) bits.
_UUID4_VERSION = bytes((b & 0x0F) | 0x40 for b in range(256))
_UUID4_VARIANT = bytes((b & 0x3F) | 0x80 for b in range(256))


def new_job_ids(n: int) -> list[str]:
    """``n`` random (version 4) UUID strings, as ``str(uuid.uuid4())`` gives, from one
    ``os.urandom`` call: ~4x cheaper per id than ``uuid.uuid4()`` each."""
    raw = bytearray(os.urandom(16 * n))
    raw[6::16] = raw[6::16].translate(_UUID4_VERSION)
    raw[8::16] = raw[8::16].translate(_UUID4_VARIANT)
    h = raw.hex()
    return [
        f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-{h[i + 12 : i + 16]}-{h[i + 16 : i + 20]}-{h[i + 20 : i + 32]}"
        for i in range(0, 32 * n, 32)
    ]


def job_id_for(kind: str, idempotency_key: str | None) -> str:
    """A fresh id, or a stable one derived from the idempotency key (same key, same job)."""
    if idempotency_key is None:
        return str(uuid.uuid4())
    return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{kind}\x00{idempotency_key}"))


@dataclass
class TaskMessage:
    """One job as Celery's protocol v2 carries it."""

    kind: str
    job_id: str
    body: bytes
    priority: int
    queue: str
    headers: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        kind: str,
        args: list[Any],
        kwargs: dict[str, Any],
        *,
        job_id: str,
        priority: int,
        queue: str,
        extra_headers: dict[str, Any] | None = None,
        eta: str | None = None,
    ) -> TaskMessage:
        """Encode the body as JSON and fill the headers a Celery worker expects."""
        body = encode_json([args, kwargs, EMPTY_EMBED])
        headers = {**STATIC_HEADERS, "task": kind, "id": job_id, "root_id": job_id, "eta": eta}
        if extra_headers:
            headers.update(extra_headers)
        return cls(kind, job_id, body, priority, queue, headers)

    def properties(self) -> dict[str, Any]:
        """AMQP-style message properties."""
        return {
            "correlation_id": self.job_id,
            "reply_to": "",
            "delivery_mode": 2,
            "priority": self.priority,
        }

    def redis_envelope(self) -> str:
        """The JSON envelope kombu's Redis transport stores in the queue's list."""
        body = base64.b64encode(self.body).decode()
        return encode_json(self.redis_envelope_fields(body, next_delivery_tag())).decode()

    def redis_envelope_fields(self, body: str, delivery_tag: str) -> dict[str, Any]:
        """The envelope as a dict, with the base64 ``body`` and ``delivery_tag`` given."""
        props = self.properties()
        props["delivery_info"] = {"exchange": self.queue, "routing_key": self.queue}
        props["body_encoding"] = "base64"
        props["delivery_tag"] = delivery_tag
        return {
            "body": body,
            "content-encoding": "utf-8",
            "content-type": JSON_CONTENT_TYPE,
            "headers": self.headers,
            "properties": props,
        }


#: The body of a job with one positional argument, around that argument's JSON.
_SINGLE_ARG_BODY = b"[[%s],{}," + encode_json(EMPTY_EMBED) + b"]"
#: Marks a per-job value in an :class:`EnvelopeTemplate`; the random part keeps user text
#: (a client id) from ever looking like a slot.
_SLOT_MARK = f"@@slot-{uuid.uuid4().hex}:"
_SLOT = re.compile(re.escape(_SLOT_MARK.encode()) + rb"(\w+)@@")
#: The header a producer stamps with the publish time (epoch seconds, a JSON number): the
#: queue-wait histogram and the oldest-job age read it.
SENT_AT_HEADER = "taskfleet_sent_at"
#: Stands for the publish time in a template until :meth:`EnvelopeTemplate.stamped`.
_SENT_MARK = f"sent-at-{uuid.uuid4().hex}"
#: Where the per-job values fall in the encoded envelope (the order of its dict's keys).
_SLOTS_PLAIN = ("body", "id", "id", "id", "tag")
_SLOTS_KEYED = ("body", "id", "id", "key", "id", "tag")


def encode_single_arg_body(arg: Any) -> bytes:
    """``encode_json([[arg], {}, EMPTY_EMBED])``, encoding only ``arg`` per call.

    Raises:
        TypeError: ``arg`` is not JSON-serialisable.
        ValueError: ``arg`` is circular.
    """
    return _SINGLE_ARG_BODY % encode_json(arg)


class EnvelopeTemplate:
    """The Redis envelope of :meth:`TaskMessage.redis_envelope` for one kind, queue, priority
    and header set, encoded once with the per-job values (body, id, idempotency key, delivery
    tag) left as slots, so a job costs one ``bytes`` %-format instead of a dict build and a
    JSON encode (~5x cheaper). The slots take only JSON-safe text: base64, a UUID, an
    integer tag, and the idempotency key as :func:`encode_json` encodes it.
    """

    def __init__(
        self,
        kind: str,
        queue: str,
        priority: int,
        extra_headers: dict[str, Any],
        keyed: bool,
    ) -> None:
        headers = dict(extra_headers)
        headers[SENT_AT_HEADER] = _SENT_MARK
        if keyed:
            headers["taskfleet_idempotency_key"] = _slot("key")
        message = TaskMessage.build(
            kind, [], {}, job_id=_slot("id"), priority=priority, queue=queue, extra_headers=headers
        )
        encoded = encode_json(
            message.redis_envelope_fields(_slot("body"), _TAG_PREFIX + "-" + _slot("tag"))
        )
        parts = _SLOT.split(encoded)
        slots = tuple(name.decode() for name in parts[1::2])
        if slots != (_SLOTS_KEYED if keyed else _SLOTS_PLAIN):
            raise RuntimeError(f"envelope slots out of the expected order: {slots}")
        literals = [text.replace(b"%", b"%%") for text in parts[0::2]]
        if keyed:  # the key slot takes a whole JSON value (quotes included), not string text
            at = slots.index("key")
            literals[at], literals[at + 1] = literals[at][:-1], literals[at + 1][1:]
        conversions = [b"%d" if name == "tag" else b"%s" for name in slots]
        self.pattern = literals[0] + b"".join(
            conv + text for conv, text in zip(conversions, literals[1:], strict=True)
        )
        self.keyed = keyed
        self.sent_mark = b'"' + _SENT_MARK.encode() + b'"'

    def stamped(self, sent_at: float, headers: dict[str, str] | None = None) -> EnvelopeTemplate:
        """This template with the publish time filled in (once per batch and shape), and
        ``headers`` (a batch's trace context) added after it."""
        copy = object.__new__(EnvelopeTemplate)
        copy.keyed = self.keyed
        copy.sent_mark = self.sent_mark
        value = repr(round(sent_at, 6)).encode()
        for name, text in (headers or {}).items():  # more members of the same JSON object
            member = encode_json(name) + b": " + encode_json(text)
            value += b", " + member.replace(b"%", b"%%")
        copy.pattern = self.pattern.replace(self.sent_mark, value)
        return copy

    def render(self, job_id: str, body: bytes, idempotency_key: str | None = None) -> bytes:
        """The envelope of one job: its id, its JSON ``body``, and (keyed templates) its key."""
        jid = job_id.encode()
        b64 = binascii.b2a_base64(body, newline=False)
        if self.keyed:
            key = encode_json(idempotency_key)
            return self.pattern % (b64, jid, jid, key, jid, next(_tag_counter))
        return self.pattern % (b64, jid, jid, jid, next(_tag_counter))


def _slot(name: str) -> str:
    return f"{_SLOT_MARK}{name}@@"
