"""Celery message protocol v2, built directly, for publishing many jobs in few round trips.

``apply_async`` spends most of a publish in Python (argument reprs, a producer per call,
routing lookups). For batches taskfleet builds the same message a Celery producer would
(protocol v2, JSON body) and hands it to the broker in one pipeline (Redis) or one
transaction (RabbitMQ). The format is the public contract for producers in other languages;
``docs`` in the README show it.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
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


def next_delivery_tag() -> str:
    """A delivery tag unique across processes (kombu keys its unacked hash by it): a random
    per-process prefix and a counter, ~10x cheaper than a uuid4 per message."""
    return f"{_TAG_PREFIX}-{next(_tag_counter)}"


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
        props = self.properties()
        props["delivery_info"] = {"exchange": self.queue, "routing_key": self.queue}
        props["body_encoding"] = "base64"
        props["delivery_tag"] = next_delivery_tag()
        return encode_json(
            {
                "body": base64.b64encode(self.body).decode(),
                "content-encoding": "utf-8",
                "content-type": JSON_CONTENT_TYPE,
                "headers": self.headers,
                "properties": props,
            }
        ).decode()
