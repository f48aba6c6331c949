"""One answer to "which pool does this worker run?" (``taskfleet.workers.pools``).

Checked against Celery's own alias table and pool classes, in every shape a pool reaches
taskfleet: the ``-P`` name, the class, an instance, and the ``implementation`` string of
``inspect stats``.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from celery.concurrency import ALIASES, get_implementation
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.concurrency.solo import TaskPool as SoloPool

from taskfleet.workers.pools import GREEN_POOLS, PoolKind, pool_kind

#: Every pool name Celery knows (its ``-P`` choices) and the kind it is.
EXPECTED: dict[str, PoolKind] = {
    "prefork": "prefork",
    "processes": "prefork",  # Celery's compatibility alias
    "solo": "solo",
    "gevent": "gevent",
    "eventlet": "eventlet",
    "threads": "threads",
}
#: Celery's alias for an out-of-tree pool named by an environment variable.
CUSTOM = "custom"


def test_every_pool_name_celery_knows_has_a_kind() -> None:
    assert set(ALIASES) - {CUSTOM} == set(EXPECTED)


@pytest.mark.parametrize(("name", "kind"), EXPECTED.items())
def test_names_classes_and_implementation_strings_agree(name: str, kind: PoolKind) -> None:
    pool_cls = get_implementation(name)
    implementation = f"{pool_cls.__module__}:{pool_cls.__name__}"  # as `inspect stats` says

    assert pool_kind(name) == kind
    assert pool_kind(pool_cls) == kind
    assert pool_kind(implementation) == kind
    assert pool_kind(ALIASES[name]) == kind
    assert (kind in GREEN_POOLS) is (kind in ("gevent", "eventlet"))


def test_instances_and_their_reported_implementation() -> None:
    solo = SoloPool()
    assert pool_kind(solo) == "solo"
    assert pool_kind(solo.info["implementation"]) == "solo"
    assert pool_kind(PreforkPool(limit=1)) == "prefork"


def test_a_subclass_is_the_kind_of_its_celery_base() -> None:
    class TunedPrefork(PreforkPool):
        pass

    assert pool_kind(TunedPrefork) == "prefork"
    assert pool_kind(f"{__name__}:TunedPrefork") == "other"  # a path is not imported


@pytest.mark.parametrize("pool", [None, "", "custom", "mypkg.pools:Fast", object(), 42])
def test_anything_else_is_other(pool: object) -> None:
    assert pool_kind(pool) == "other"


def test_asking_imports_no_green_library() -> None:
    code = (
        "import sys\n"
        "from taskfleet.workers.pools import pool_kind\n"
        "assert pool_kind('gevent') == 'gevent' and pool_kind('eventlet') == 'eventlet'\n"
        "loaded = [m for m in ('gevent', 'eventlet', 'celery.concurrency.gevent') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
