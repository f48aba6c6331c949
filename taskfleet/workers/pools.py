"""Which of Celery's pools a worker runs: one answer for every place that asks.

A worker's pool reaches taskfleet in several shapes: the name given to ``-P`` (``prefork``,
or Celery's alias ``processes``; ``WorkController.pool_cls`` is still that name at
``worker_init``), a ``module:Class`` path (also what ``inspect stats`` reports as the pool's
``implementation``), a class, or a pool instance. :func:`pool_kind` maps each to one
:data:`PoolKind` through Celery's own alias table and the module defining the class (or one
of its bases, so a subclass of the prefork pool is still prefork). It never imports a pool:
the gevent and eventlet modules are not loaded by asking.
"""

from __future__ import annotations

from typing import Literal

from celery.concurrency import ALIASES

#: What a worker's pool is; ``other`` is anything that is not one of Celery's own pools.
PoolKind = Literal["prefork", "solo", "gevent", "eventlet", "threads", "other"]
#: Pools that run jobs as greenlets, many at once in one process.
GREEN_POOLS: frozenset[PoolKind] = frozenset({"gevent", "eventlet"})
#: The module of each of Celery's pool implementations.
POOL_MODULES: dict[str, PoolKind] = {
    "celery.concurrency.prefork": "prefork",
    "celery.concurrency.solo": "solo",
    "celery.concurrency.gevent": "gevent",
    "celery.concurrency.eventlet": "eventlet",
    "celery.concurrency.thread": "threads",
}
#: What separates the module from the class in a ``module:Class`` path.
PATH_SEPARATOR = ":"


def pool_kind(pool: object) -> PoolKind:
    """The kind of a worker's pool, given its name, path, class or instance.

    Args:
        pool: ``"solo"``, ``"celery.concurrency.solo:TaskPool"``, the pool class or an
            instance of it; None (no pool known) is ``other``.
    """
    if pool is None:
        return "other"
    if isinstance(pool, str):
        return _kind_of_path(ALIASES.get(pool) or pool)
    cls = pool if isinstance(pool, type) else type(pool)
    for base in cls.__mro__:
        kind = POOL_MODULES.get(base.__module__)
        if kind is not None:
            return kind
    return "other"


def _kind_of_path(path: str) -> PoolKind:
    """The kind of a ``module:Class`` or dotted ``module.Class`` path, by its module."""
    module = path.partition(PATH_SEPARATOR)[0]
    while module:
        kind = POOL_MODULES.get(module)
        if kind is not None:
            return kind
        module = module.rpartition(".")[0]
    return "other"
