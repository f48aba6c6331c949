"""One publisher per broker, picked by the broker URL's scheme (as ``limits`` picks storage).

:data:`PUBLISHERS` maps each scheme to its publisher class; :func:`publisher_for` is the one
place a client chooses. ``AsyncClient`` picks from :data:`ASYNC_PUBLISHERS` the same way: on
Redis a natively async publisher; a scheme without one (RabbitMQ) has no entry there, and the
async client runs the sync publisher in a thread instead.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from taskfleet.publishing.amqp import AmqpPublisher
from taskfleet.publishing.base import (
    AsyncPublisher,
    PreparedJobs,
    Publisher,
    PublisherConfig,
)
from taskfleet.publishing.redis import AsyncRedisPublisher, RedisPublisher

#: Broker URL scheme -> its publisher.
PUBLISHERS: dict[str, type[RedisPublisher] | type[AmqpPublisher]] = {
    scheme: cls for cls in (RedisPublisher, AmqpPublisher) for scheme in cls.SCHEMES
}
#: Broker URL scheme -> its natively async publisher, where there is one.
ASYNC_PUBLISHERS: dict[str, type[AsyncRedisPublisher]] = dict.fromkeys(
    AsyncRedisPublisher.SCHEMES, AsyncRedisPublisher
)


def scheme_of(url: str) -> str:
    """A URL's scheme, lower-cased."""
    return urlsplit(url).scheme.lower()


def publisher_for(config: PublisherConfig) -> Publisher:
    """The publisher of ``config.broker_url``'s scheme.

    Raises:
        ValueError: no publisher speaks that scheme.
    """
    scheme = scheme_of(config.broker_url)
    cls = PUBLISHERS.get(scheme)
    if cls is None:
        known = ", ".join(sorted(PUBLISHERS))
        raise ValueError(f"no publisher for broker scheme {scheme!r}; known: {known}")
    return cls(config)


def async_publisher_for(config: PublisherConfig) -> AsyncPublisher | None:
    """The natively async publisher of ``config.broker_url``'s scheme, or None."""
    cls = ASYNC_PUBLISHERS.get(scheme_of(config.broker_url))
    return None if cls is None else cls(config)


__all__ = [
    "ASYNC_PUBLISHERS",
    "PUBLISHERS",
    "AsyncPublisher",
    "PreparedJobs",
    "Publisher",
    "PublisherConfig",
    "async_publisher_for",
    "publisher_for",
]
