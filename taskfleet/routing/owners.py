"""Which consumer holds which unacked delivery, and whether that consumer still lives.

kombu's ``unacked`` hash does not say who holds a delivery, so a dead worker's jobs wait for
the visibility timeout (an hour). taskfleet ties each delivery to its consumer (an *owner*:
one per worker process) with three keys, written in the same writes as kombu's own records
(``taskfleet.routing.bookkeeping``):

* ``taskfleet:owner:<id>:tags``: hash of the owner's delivery tags, each with the score its
  ``unacked_index`` entry got (the stamp ties the tag to this owner's record: a tag restored
  and delivered again to another consumer gets a new score).
* ``taskfleet:owner:<id>:alive``: refreshed every ``heartbeat_interval`` with a TTL of
  ``heartbeat_ttl`` by the worker's heartbeat sidecar (``taskfleet.workers.heartbeat``).
* ``taskfleet:owners:<unacked key>``: every owner using that unacked hash, scored by its last
  heartbeat, so reclaimers (``taskfleet.routing.reclaim``) find the dead ones.
* ``taskfleet:consumers:<queue>``: every owner consuming that queue, scored by its last
  heartbeat (backdated by a TTL when its worker exits), so producers see which worker groups are
  served (``taskfleet.routing.groups``).

A process has an owner only once its worker claimed one (:func:`claim`); without one the
transport keeps stock kombu's bookkeeping and the visibility timeout alone restores.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

OWNER_PREFIX = "taskfleet:owner:"
REGISTRY_PREFIX = "taskfleet:owners:"
CONSUMERS_PREFIX = "taskfleet:consumers:"


def registry_key(unacked_key: str) -> str:
    """The sorted set of owners recording in ``unacked_key`` (scored by last heartbeat)."""
    return f"{REGISTRY_PREFIX}{unacked_key}"


def consumers_key(queue: str) -> str:
    """The sorted set of owners consuming ``queue`` (scored by last heartbeat)."""
    return f"{CONSUMERS_PREFIX}{queue}"


def tags_key(owner_id: str) -> str:
    """The hash ``tag -> stamp`` of an owner's unacked deliveries."""
    return f"{OWNER_PREFIX}{owner_id}:tags"


def alive_key(owner_id: str) -> str:
    """The key an owner's heartbeat keeps alive."""
    return f"{OWNER_PREFIX}{owner_id}:alive"


def new_owner_id() -> str:
    """A fresh owner id: host, pid and a random part (a pid is reused, the id never)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Owner:
    """The owner of this process's deliveries."""

    id: str
    pid: int

    @property
    def tags_key(self) -> str:
        """See :func:`tags_key`."""
        return tags_key(self.id)

    @property
    def alive_key(self) -> str:
        """See :func:`alive_key`."""
        return alive_key(self.id)


_owner: Owner | None = None


def claim(owner_id: str) -> Owner:
    """Make ``owner_id`` the owner of the deliveries this process receives from now on."""
    global _owner
    _owner = Owner(owner_id, os.getpid())
    return _owner


def release() -> None:
    """This process records deliveries without an owner again (stock bookkeeping)."""
    global _owner
    _owner = None


def current() -> Owner | None:
    """This process's owner; a forked child (a prefork pool process) has none."""
    owner = _owner
    return owner if owner is not None and owner.pid == os.getpid() else None
