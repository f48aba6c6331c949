"""Process supervision for a local fleet: what ``taskfleet up`` and ``taskfleet demo`` run.

:class:`Fleet` runs a CPU worker, an I/O worker, beat and Flower as child processes sharing
one set of services, keeps them running and stops them cleanly: :meth:`Fleet.supervise`
restarts a child that dies (and the embedded Redis/PostgreSQL the fleet started) after an
exponential backoff, and gives up only when one crashes 5 times within 60 s. Every child
runs in its own session (process group), so a terminal's Ctrl-C reaches only the
supervisor, which then stops the children in order; anything a child leaves behind in its
group (prefork pool processes, the result persister) is swept up after it exits. On Linux a
child is also sent SIGTERM if the supervisor dies without cleaning up.

Modules: :mod:`~taskfleet.fleet.supervisor` (:class:`Fleet`), :mod:`~taskfleet.fleet.plan`
(which children), :mod:`~taskfleet.fleet.children` (their types and errors),
:mod:`~taskfleet.fleet.restarts` (backoff and give-up rule),
:mod:`~taskfleet.fleet.supervision` (the loop), :mod:`~taskfleet.fleet.watches` (what it
watches), :mod:`~taskfleet.fleet.status` (``fleet-status.json``),
:mod:`~taskfleet.fleet.environment` (what they see), :mod:`~taskfleet.fleet.flower` and
:mod:`~taskfleet.fleet.processes` (signals, stopping). Pid, port and polling helpers are
shared with the embedded stack (:mod:`taskfleet.devstack.processes`,
:mod:`taskfleet.devstack.polling`, :mod:`taskfleet.devstack.logfiles`).
"""

from __future__ import annotations

from taskfleet.devstack.logfiles import TAIL_LINES, tail
from taskfleet.devstack.polling import POLL_INTERVAL_S, Deadline, wait_until
from taskfleet.devstack.processes import group_members, port_free
from taskfleet.fleet.children import (
    Child,
    ChildDied,
    ChildRole,
    FleetError,
    FleetOptions,
    RestartFailed,
)
from taskfleet.fleet.environment import needs_embedded_stack, sanitize_url, settings_env
from taskfleet.fleet.flower import (
    DEFAULT_FLOWER_PORT,
    DEFAULT_FLOWER_USER,
    FLOWER_HOST,
    FLOWER_PASSWORD_BYTES,
    FlowerAuth,
    flower_auth,
)
from taskfleet.fleet.plan import BEAT_SCHEDULE_NAME, LOG_DIR_NAME
from taskfleet.fleet.processes import (
    KILL_TIMEOUT_S,
    PING_TIMEOUT_S,
    port_open,
    signals_raise_interrupt,
)
from taskfleet.fleet.restarts import (
    BACKOFF_INITIAL_S,
    BACKOFF_MAX_S,
    GIVE_UP_CRASHES,
    GIVE_UP_WINDOW_S,
    CrashHistory,
    RestartDecision,
    RestartPolicy,
    describe_exit,
)
from taskfleet.fleet.status import STATUS_FILE_NAME, read_status
from taskfleet.fleet.supervision import Event, GaveUp, Supervisor
from taskfleet.fleet.supervisor import (
    DEFAULT_READY_TIMEOUT_S,
    DEFAULT_STOP_TIMEOUT_S,
    SUPERVISE_INTERVAL_S,
    Fleet,
)

LOG_TAIL_LINES = TAIL_LINES
"""Lines :func:`tail` returns by default."""

__all__ = [
    "BACKOFF_INITIAL_S",
    "BACKOFF_MAX_S",
    "BEAT_SCHEDULE_NAME",
    "DEFAULT_FLOWER_PORT",
    "DEFAULT_FLOWER_USER",
    "DEFAULT_READY_TIMEOUT_S",
    "DEFAULT_STOP_TIMEOUT_S",
    "FLOWER_HOST",
    "FLOWER_PASSWORD_BYTES",
    "GIVE_UP_CRASHES",
    "GIVE_UP_WINDOW_S",
    "KILL_TIMEOUT_S",
    "LOG_DIR_NAME",
    "LOG_TAIL_LINES",
    "PING_TIMEOUT_S",
    "POLL_INTERVAL_S",
    "STATUS_FILE_NAME",
    "SUPERVISE_INTERVAL_S",
    "Child",
    "ChildDied",
    "ChildRole",
    "CrashHistory",
    "Deadline",
    "Event",
    "Fleet",
    "FleetError",
    "FleetOptions",
    "FlowerAuth",
    "GaveUp",
    "RestartDecision",
    "RestartFailed",
    "RestartPolicy",
    "Supervisor",
    "describe_exit",
    "flower_auth",
    "group_members",
    "needs_embedded_stack",
    "port_free",
    "port_open",
    "read_status",
    "sanitize_url",
    "settings_env",
    "signals_raise_interrupt",
    "tail",
    "wait_until",
]
