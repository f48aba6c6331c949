"""When the supervisor restarts a dead child, and when it gives up.

A child that dies is restarted after an exponential backoff computed by tenacity's
``wait_exponential`` (the delay grows with the crashes of that child in the last
:data:`GIVE_UP_WINDOW_S` seconds, so a child that crashes once a day always comes back
after :data:`BACKOFF_INITIAL_S`). The supervisor gives up only on a burst:
:data:`GIVE_UP_CRASHES` crashes of the same child within :data:`GIVE_UP_WINDOW_S`.

The clock is injected, so the policy is tested without sleeping.
"""

from __future__ import annotations

import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from tenacity import RetryCallState, Retrying, wait_exponential
from tenacity.wait import wait_base

from taskfleet.config.resilience import DEFAULT_RESTART_BACKOFF_S

BACKOFF_INITIAL_S = DEFAULT_RESTART_BACKOFF_S
"""Delay before the first restart of a child (no other crash in the window)."""

BACKOFF_MAX_S = 8.0
"""Longest delay between a crash and the restart."""

GIVE_UP_CRASHES = 5
"""Crashes of one child within :data:`GIVE_UP_WINDOW_S` after which the supervisor gives up."""

GIVE_UP_WINDOW_S = 60.0
"""Seconds a crash counts towards the backoff and the give-up rule."""

Clock = Callable[[], float]


def default_wait(initial_s: float = BACKOFF_INITIAL_S) -> wait_base:
    """The backoff: 0.5 s, 1 s, 2 s, 4 s, ... capped at :data:`BACKOFF_MAX_S` (``initial_s``:
    ``TASKFLEET_RESILIENCE_RESTART_BACKOFF``)."""
    return wait_exponential(multiplier=initial_s, max=BACKOFF_MAX_S)


@dataclass(frozen=True)
class RestartPolicy:
    """How long to wait before a restart, and how many crashes are too many.

    Attributes:
        wait: A tenacity wait strategy; called with the crash count in the window as the
            attempt number (compose them as in tenacity, e.g. ``wait_fixed(1) +
            wait_random(0, 1)``).
        give_up_crashes: Crashes within ``window_s`` that make the supervisor give up.
        window_s: Seconds a crash counts.
    """

    wait: wait_base = field(default_factory=default_wait)
    give_up_crashes: int = GIVE_UP_CRASHES
    window_s: float = GIVE_UP_WINDOW_S

    def delay(self, crashes_in_window: int) -> float:
        """Seconds to wait before restarting a child with that many recent crashes."""
        state = RetryCallState(retry_object=Retrying(), fn=None, args=(), kwargs={})
        state.attempt_number = max(1, crashes_in_window)
        return float(self.wait(state))


@dataclass(frozen=True)
class RestartDecision:
    """What to do about one crash.

    Attributes:
        give_up: Too many crashes in the window: stop the fleet.
        delay: Seconds to wait before the restart (0 when giving up).
        crashes_in_window: Crashes of this child in the window, this one included.
    """

    give_up: bool
    delay: float
    crashes_in_window: int


class CrashHistory:
    """The crashes of one child, and the decision each one calls for.

    Args:
        policy: The restart policy.
        clock: Monotonic seconds (injected in tests).
    """

    def __init__(self, policy: RestartPolicy, clock: Clock = time.monotonic) -> None:
        """Start with no crash."""
        self.policy = policy
        self.clock = clock
        self.recent: deque[float] = deque()
        self.total = 0

    def in_window(self) -> int:
        """Crashes within the policy's window, as of now."""
        self._expire(self.clock())
        return len(self.recent)

    def record(self, served: bool = False) -> RestartDecision:
        """Count a crash now and decide: restart after a delay, or give up.

        ``served``: the child is a worker that had come up (answered a ping) since its last
        start. Only a child that crashes again and again *before* it serves is given up on: that is a crash loop no
        restart mends (a bad setting, a taken port). One that serves and then dies, such as
        a solo worker killed by the job it ran (a poison pill, ``SIGXCPU``), is restarted
        with the same backoff however often: its next job may be fine, and a poison pill is
        dead-lettered after ``TASKFLEET_RESILIENCE_MAX_DELIVERIES``.
        """
        now = self.clock()
        self.recent.append(now)
        self.total += 1
        self._expire(now)
        count = len(self.recent)
        if count >= self.policy.give_up_crashes and not served:
            return RestartDecision(give_up=True, delay=0.0, crashes_in_window=count)
        return RestartDecision(False, self.policy.delay(count), count)

    def _expire(self, now: float) -> None:
        while self.recent and now - self.recent[0] > self.policy.window_s:
            self.recent.popleft()


def describe_exit(returncode: int) -> str:
    """How a process ended, for people: ``exit status 1`` or ``killed by SIGKILL (9)``."""
    if returncode >= 0:
        return f"exit status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = "signal"
    note = " (CPU time limit)" if name == "SIGXCPU" else ""
    return f"killed by {name} ({-returncode}){note}"
