"""How many Redis connections one worker process may hold at once.

A prefork child or a solo worker runs one job at a time, so small pools do. A gevent worker
runs up to its pool size of greenlets, and any number of them may ack, publish or store a
result at the same moment. redis-py raises ``MaxConnectionsError`` past a pool's cap, and kombu
caps each broker channel's pool at 10 (celery/celery#1350). In a green worker a burst of
simultaneous acks then fails one ack, Celery drops the broker connection and restarts its
consumer, and the jobs it had reserved stay in the ``unacked`` hash until the visibility
timeout (an hour by default) before anyone runs them.

So a green worker raises every Redis pool cap of its process to its *greenlet ceiling*: the
larger of its concurrency and the autoscaler's per-worker maximum (the pool may grow to it at
run time), plus headroom for the consumer, the remote-control mailbox and the breaker event
feed. Connections are still opened only when used at once, so a quiet worker keeps few.
A blocking pool is not the answer: redis-py's ``BlockingConnectionPool`` stalled gevent
(measured: 25 jobs/s against 304).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from taskfleet.config.app_settings import settings_of
from taskfleet.config.autoscale import load_autoscale_settings

if TYPE_CHECKING:
    from celery import Celery

#: kombu's own cap on a Redis channel's connection pool.
KOMBU_MAX_CONNECTIONS = 10
#: Connections a green worker uses beside its greenlets' (consumer, mailbox, event feed).
GREEN_HEADROOM = 16

_green_ceiling = 0


def green_ceiling(concurrency: int) -> int:
    """Connections a green worker of ``concurrency`` greenlets may need at once."""
    grows_to = load_autoscale_settings().io_worker_max
    return max(concurrency, grows_to) + GREEN_HEADROOM


def size_for_green_worker(app: Celery, concurrency: int) -> int:
    """Raise this process's Redis pool caps (broker and taskfleet's) for a green worker.

    Call before the worker connects (``worker_init``). Returns the new cap. A RabbitMQ
    broker has no pool to size (one AMQP connection, many channels).
    """
    global _green_ceiling
    _green_ceiling = green_ceiling(concurrency)
    if not settings_of(app).broker_is_redis:
        return _green_ceiling
    options = dict(app.conf.broker_transport_options or {})
    options["max_connections"] = max(
        int(options.get("max_connections", KOMBU_MAX_CONNECTIONS)), _green_ceiling
    )
    app.conf.broker_transport_options = options
    return _green_ceiling


def redis_pool_cap(configured: int) -> int:
    """The cap for one of taskfleet's Redis pools in this process (``redis_pool_size``)."""
    return max(configured, _green_ceiling)
