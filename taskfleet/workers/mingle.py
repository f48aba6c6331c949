"""Mingle without the second's wait: a starting worker syncs with its neighbours in 0.2 s.

Celery's Mingle bootstep (a worker's first exchange with the workers already running: their
revoked job ids and logical clocks) broadcasts ``hello`` and collects the replies for a
fixed second before the worker consumes anything. Measured here, that second was half of a
solo worker's start (1.95 s from launch to ready), and a solo worker starts on every grow of
the pool beyond its standby and on every restart after a crash.

A neighbour that answers at all answers within milliseconds: an idle worker replies from
its event loop at once, and a busy solo worker replies only between jobs, which a second
does not wait out either. So taskfleet's apps use :class:`Control` (Celery's ``control``
class argument, ``taskfleet.app_config.CONTROL_PATH``), whose inspector waits at most
:data:`HELLO_TIMEOUT_S` for ``hello`` replies. ``hello`` is sent by Mingle alone; every
other inspect command keeps the timeout its caller asks for. ``--without-mingle`` still turns the exchange off.

Hand-written, as far as the wait goes: Celery's Mingle takes no timeout setting.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from celery.app.control import Control as StockControl
from celery.app.control import Inspect

#: Seconds a starting worker waits for its neighbours' ``hello`` replies (Celery's: 1.0).
HELLO_TIMEOUT_S = 0.2


class QuickHelloInspect(Inspect):  # type: ignore[misc]
    """Celery's inspector; its ``hello`` waits at most :data:`HELLO_TIMEOUT_S`."""

    def hello(self, from_node: str, revoked: Any = None) -> Any:
        """Mingle's greeting: replies within the short wait."""
        asked = getattr(self, "timeout", None)
        self.timeout = HELLO_TIMEOUT_S if asked is None else min(float(asked), HELLO_TIMEOUT_S)
        return super().hello(from_node, revoked=revoked)


class Control(StockControl):  # type: ignore[misc]
    """Celery's remote control, with :class:`QuickHelloInspect` as its inspector."""

    @cached_property
    def inspect(self) -> Any:
        """The inspector class, bound to the app (as Celery's own property builds it)."""
        return self.app.subclass_with_self(QuickHelloInspect, reverse="control.inspect")
