"""Run Flower with a Broker page that works on taskfleet's brokers: Redis and RabbitMQ.

Why the page said "'redis' broker is not supported": taskfleet's workers use their own
kombu transport class (``broker_transport = "taskfleet.routing.transport:Transport"``), and
kombu's ``Connection.as_uri()`` then writes that class path where the scheme goes
(``taskfleet.routing.transport:Transport://127.0.0.1:6379/0``). Flower builds its broker
client from that URI (``flower.utils.broker.Broker`` picks a class by scheme: ``amqp``,
``redis``, ``rediss``, ...), finds none for ``taskfleet.routing.transport``, raises
``NotImplementedError`` and reports the connection's driver type, ``redis``, as not
supported. ``--broker-api`` does not help: Flower reads it for RabbitMQ only.

:func:`install` gives Flower the URI with the driver's own scheme (``redis`` or ``rediss``),
so its stock Redis broker client reads the queues, summing every priority sub-list
(Flower reads ``priority_steps`` and the separator from ``broker_transport_options``, the
same ones the workers use). Nothing else in Flower changes; Flower's own connection (events,
control) still uses taskfleet's transport.

On RabbitMQ the URI is fine (``amqp://``), but stock Flower reads queue depths from
RabbitMQ's management HTTP API only (port 15672, or ``--broker-api``), a plugin many
installations do not enable: the page then lists nothing. Unless ``--broker-api`` is given,
:func:`install` makes Flower read them over AMQP instead
(:mod:`taskfleet.observability.flower_amqp`): a passive ``queue.declare`` per queue answers
its ready messages (every priority of the ``x-max-priority`` queue, one queue) and its
consumers. AMQP cannot read unacknowledged (running) messages, so that column shows a dash
and "Messages" counts the ready ones; a queue not declared yet is left out, as the API
leaves it out. With ``--broker-api``, Flower's own management-API client stays.

``taskfleet up`` starts Flower as
``python -m taskfleet.observability.flower_broker -A taskfleet.app flower ...``; importing
this module changes nothing.
"""

from __future__ import annotations

import sys
from typing import Any, Final

#: kombu's driver type -> the scheme Flower's broker factory knows.
DRIVER_SCHEMES: Final[dict[str, str]] = {"redis": "redis"}
SSL_SCHEMES: Final[dict[str, str]] = {"redis": "rediss"}


def flower_uri(connection: Any, include_password: bool) -> str:
    """``connection.as_uri()`` with a scheme Flower knows in place of a transport class path."""
    uri = str(connection.as_uri(include_password=include_password))
    driver = getattr(connection.transport, "driver_type", None)
    if driver not in DRIVER_SCHEMES:
        return uri
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme in (DRIVER_SCHEMES[driver], SSL_SCHEMES[driver]):
        return uri
    return f"{(SSL_SCHEMES if connection.ssl else DRIVER_SCHEMES)[driver]}://{rest}"


def install() -> None:
    """Make Flower build its broker client (and show its broker URL) from :func:`flower_uri`,
    and read RabbitMQ's queues over AMQP when no ``--broker-api`` is given."""
    from flower.app import Flower

    from taskfleet.observability.flower_amqp import patch_flower

    def uri(include_password: bool) -> property:
        def read(self: Any) -> str:
            with self.capp.connection() as conn:
                return flower_uri(conn, include_password)

        return property(read)

    Flower.broker_uri = uri(False)
    Flower.broker_uri_with_password = uri(True)
    patch_flower()


def main() -> None:
    """``celery`` with the fix installed: ``python -m ... -A taskfleet.app flower ...``."""
    from celery.bin.celery import main as celery_main

    install()
    sys.argv[0] = "celery"
    sys.exit(celery_main())


if __name__ == "__main__":
    main()
