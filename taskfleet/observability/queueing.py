"""M/M/c queueing maths for capacity planning: pure functions, no I/O.

Assumptions (the M/M/c model): arrivals are Poisson at a steady rate ``λ`` (jobs/s); each
job's service time is exponential with mean ``S`` seconds, independent of the others; ``c``
identical servers (pool processes or greenlets) take jobs first come, first served from an
unbounded queue. Offered load ``a = λ·S`` (Erlangs), utilisation ``rho = a / c``. With
``rho < 1`` the probability that a job waits is Erlang C, ``C(c, a)``, and its mean wait in the
queue ``Wq = C(c, a)·S / (c - a)``. Real job times are rarely exponential (a narrower spread
waits less, a heavier tail more), priorities reorder the queue, and rates drift, so the
figures are estimates for sizing, not promises.

The drain time of a backlog (every job not yet completed: waiting, reserved by a worker or
running) is a fluid estimate: while it holds more jobs than servers, every server is busy
and it shrinks at the spare service rate ``c/S - λ``; the last ``c`` (one per server) then
take one service time. With no arrivals that is ``backlog·S/c`` for a backlog of at least
``c``. It is off by about a service time (a few for many exponential servers): jobs already
running are counted whole (right on average for exponential times, which are memoryless;
steady ones have less left, so up to ``S`` too long), and the last wave of exponential jobs
takes the longest of ``c`` times, ``S·(1 + 1/2 + ... + 1/c)`` on average (2.1·S for 4
servers), where steady ones take ``S``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

#: The most servers :func:`servers_for_wait` will consider.
MAX_SERVERS: Final = 100_000
INFINITE: Final = math.inf


@dataclass(frozen=True)
class QueueFigures:
    """An M/M/c queue's steady state (``inf`` waits when it is overloaded)."""

    offered_load: float
    utilisation: float
    wait_probability: float
    mean_wait_s: float


def erlang_c(servers: int, offered_load: float) -> float:
    """Probability that an arriving job waits, ``C(c, a)`` (1.0 when ``a >= c``).

    Computed through Erlang B's recurrence, which stays finite for large ``c``.

    Raises:
        ValueError: ``servers`` < 1 or ``offered_load`` < 0.
    """
    if servers < 1 or offered_load < 0:
        raise ValueError("servers must be >= 1 and offered_load >= 0")
    if offered_load >= servers:
        return 1.0
    blocking = 1.0
    for k in range(1, servers + 1):
        blocking = offered_load * blocking / (k + offered_load * blocking)
    return servers * blocking / (servers - offered_load * (1.0 - blocking))


def mmc(arrival_rate: float, service_time_s: float, servers: int) -> QueueFigures:
    """The M/M/c figures for ``λ`` jobs/s, mean service ``S`` s and ``c`` servers."""
    load = arrival_rate * service_time_s
    utilisation = load / servers
    if utilisation >= 1.0:
        return QueueFigures(load, utilisation, 1.0, INFINITE)
    waits = erlang_c(servers, load)
    return QueueFigures(load, utilisation, waits, waits * service_time_s / (servers - load))


def servers_for_wait(arrival_rate: float, service_time_s: float, target_wait_s: float) -> int:
    """The fewest servers whose mean queue wait is at most ``target_wait_s`` (at least 1).

    Raises:
        ValueError: more than :data:`MAX_SERVERS` would be needed.
    """
    load = arrival_rate * service_time_s
    servers = max(1, math.floor(load) + 1)
    while servers <= MAX_SERVERS:
        if mmc(arrival_rate, service_time_s, servers).mean_wait_s <= target_wait_s:
            return servers
        servers += 1
    raise ValueError(f"more than {MAX_SERVERS} servers needed")


def drain_time_s(backlog: int, arrival_rate: float, service_time_s: float, servers: int) -> float:
    """Seconds to work off ``backlog`` jobs (waiting or in flight): the jobs beyond one per
    server at the spare rate, then one service time (``inf`` if there is no spare rate)."""
    if backlog <= 0 or service_time_s <= 0:
        return 0.0
    spare = servers / service_time_s - arrival_rate
    if spare <= 0:
        return INFINITE
    return max(backlog - servers, 0) / spare + service_time_s
