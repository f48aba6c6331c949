"""The supervisor: starts the fleet's children, keeps them running, stops them cleanly."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from celery import Celery

from taskfleet.app_config import create_app
from taskfleet.config import ServiceURLs, Settings, resolve_services
from taskfleet.config.resilience import get_resilience_settings
from taskfleet.devstack import EmbeddedStack
from taskfleet.devstack.polling import Deadline
from taskfleet.devstack.processes import group_members, port_free
from taskfleet.fleet.children import Child, ChildDied, FleetError, FleetOptions
from taskfleet.fleet.environment import child_env, needs_embedded_stack, sanitize_url
from taskfleet.fleet.flower import (
    FLOWER_HOST,
    FLOWER_NOT_INSTALLED,
    FlowerAuth,
    flower_auth,
    flower_installed,
)
from taskfleet.fleet.forkserver import WorkerForkServer, forkable
from taskfleet.fleet.pinger import Pinger
from taskfleet.fleet.plan import LOG_DIR_NAME, READY_DIR_NAME, plan_children, prepare_metrics
from taskfleet.fleet.processes import (
    KILL_TIMEOUT_S,
    PING_TIMEOUT_S,
    launch_child,
    port_open,
    stop_children,
    sweep_groups,
)
from taskfleet.fleet.restarts import RestartPolicy
from taskfleet.fleet.scaling import SlotScaler
from taskfleet.fleet.slot_host import slot_scaler
from taskfleet.fleet.status import StatusFile
from taskfleet.fleet.supervision import Event, Supervisor, Watched
from taskfleet.fleet.watches import ChildWatch, ServiceWatch

DEFAULT_READY_TIMEOUT_S = 90.0
"""Seconds to wait for every worker to answer a ping (and Flower to listen)."""

DEFAULT_STOP_TIMEOUT_S = 30.0
"""Seconds children get to exit after SIGTERM (workers finish running jobs) before SIGKILL."""

SUPERVISE_INTERVAL_S = 0.25
"""Pause between two liveness checks of the children while the fleet runs."""

RESTART_SWEEP_TIMEOUT_S = 2.0
"""Seconds what a dead child left in its group gets after SIGTERM before SIGKILL."""

SOLO_SILENCE_MARGIN_S = 30.0
"""A solo worker's silence limit is at least its hard time limit plus this."""


class Fleet:
    """A CPU worker, an I/O worker, beat and Flower run as supervised children.

    Usage::

        with Fleet(settings, FleetOptions(flower=False)) as fleet:
            fleet.wait_ready()
            ...                       # fleet.check() raises ChildDied if one exited
            fleet.supervise()         # or: restart what dies, until an interrupt or GaveUp

    Args:
        settings: Validated settings; children see exactly these (see
            :func:`~taskfleet.fleet.settings_env`).
        options: What to run.
    """

    def __init__(self, settings: Settings, options: FleetOptions | None = None) -> None:
        """Describe the fleet; nothing is started yet."""
        self.settings = settings
        self.options = options or FleetOptions()
        self.data_dir = Path(os.path.abspath(settings.data_dir))
        self.log_dir = self.data_dir / LOG_DIR_NAME
        self.children: list[Child] = []
        self.urls: ServiceURLs | None = None
        self.started_stack = False
        self.stack_stopped = False
        self.auth: FlowerAuth | None = None
        self._control_app: Celery | None = None
        self.supervisor: Supervisor | None = None
        self.scaler: SlotScaler | None = None
        self._pinger: Pinger | None = None
        #: Forks the solo CPU workers (``TASKFLEET_FORK_WORKERS``), started with the first.
        self.forks: WorkerForkServer | None = None

    def __enter__(self) -> Fleet:
        """Start the fleet."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the fleet."""
        self.stop()

    # ------------------------------------------------------------------ starting

    @property
    def control_app(self) -> Celery:
        """A Celery app bound to this fleet's settings (for pings and publishing)."""
        if self._control_app is None:
            self._control_app = create_app(self.settings)
        return self._control_app

    def resolve(self) -> ServiceURLs:
        """Resolve the service URLs, starting the embedded stack if needed; remember if we did.

        Raises:
            taskfleet.devstack.DevStackError: The embedded stack could not start.
        """
        if self.urls is None:
            if needs_embedded_stack(self.settings):
                status = EmbeddedStack(self.data_dir).status()
                was_running = all(
                    isinstance(entry, dict) and entry.get("running")
                    for entry in (status["redis"], status["postgres"])
                )
                self.urls = resolve_services(self.settings)
                self.started_stack = not was_running
            else:
                self.urls = resolve_services(self.settings)
        return self.urls

    def start(self) -> None:
        """Resolve the services, then start every child (without waiting for readiness).

        Call from the main thread: on Linux each child is tied to the lifetime of the
        thread that started it.

        Raises:
            FleetError: Flower is not installed or its port is taken, or a child could not
                be launched.
            ConfigError: The Flower credentials are malformed.
            taskfleet.devstack.DevStackError: The embedded stack could not start.
        """
        if self.children:
            raise FleetError("fleet already started")
        if self.options.flower and not flower_installed():
            raise FleetError(FLOWER_NOT_INSTALLED)
        if self.options.flower and not port_free(FLOWER_HOST, self.options.flower_port):
            raise FleetError(
                f"port {self.options.flower_port} on {FLOWER_HOST} is in use; "
                "choose another with --flower-port or use --no-flower"
            )
        if self.options.flower:
            self.auth = flower_auth(self.settings)  # validated before anything starts
        if self.options.metrics:
            prepare_metrics(self.data_dir)
        urls = self.resolve()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        plan = plan_children(
            self.settings,
            self.options,
            broker=sanitize_url(urls.broker_url),
            data_dir=self.data_dir,
            auth=self.auth,
        )
        try:
            for child in plan:
                self.launch(child, urls)
                self.children.append(child)
        except BaseException:
            self.stop()
            raise

    def launch(self, child: Child, urls: ServiceURLs, *, append: bool = False) -> None:
        """Start ``child`` with the fleet's environment (its log appended on a restart): a solo
        CPU worker forked from the fork server (``fleet/forkserver.py``), any other child,
        or any worker when forking is off or failed, as a new process."""
        env = child_env(self.settings, urls, child.extra_env)
        forked = False
        if self.settings.fork_workers and forkable(child):
            if self.forks is None:
                self.forks = WorkerForkServer()
            forked = self.forks.start(child, env, append=append)
        if not forked:
            launch_child(child, env, append=append)
        if child.pid is not None:  # a mark an earlier process with this pid left
            (self.data_dir / READY_DIR_NAME / str(child.pid)).unlink(missing_ok=True)

    def relaunch(self, child: Child) -> None:
        """Start a dead child again, after clearing what it left in its process group.

        Raises:
            RestartFailed: It could not be launched.
        """
        if child.pid is not None:
            if child.returncode() is None:  # alive but stalled: kill it and its group first
                stop_children([child], 0.0, KILL_TIMEOUT_S)  # a stalled loop serves no SIGTERM
                child.killed = False  # that was the old process; ``killed`` is the new one's
            sweep_groups([child.pid], RESTART_SWEEP_TIMEOUT_S)
        self.launch(child, self.resolve(), append=True)

    # ------------------------------------------------------------------ health

    def check(self) -> None:
        """Raise if any child has exited.

        Raises:
            ChildDied: The first child found dead.
        """
        for child in self.children:
            code = child.returncode()
            if code is not None:
                raise ChildDied(child, code)

    def wait_ready(self, timeout: float = DEFAULT_READY_TIMEOUT_S) -> float:
        """Wait until both workers answer a ping and Flower (if run) accepts connections.

        Args:
            timeout: Seconds to wait.

        Returns:
            Seconds it took.

        Raises:
            ChildDied: A child exited while starting.
            FleetError: Not ready within ``timeout`` (the message says what is missing).
        """
        started = time.monotonic()
        deadline = Deadline(timeout)
        pending = {c.nodename for c in self.children if c.nodename is not None}
        flower = next((c for c in self.children if c.role == "flower"), None)
        flower_up = flower is None
        while True:
            self.check()
            if pending:
                replies = self.control_app.control.ping(
                    destination=sorted(pending),
                    timeout=min(PING_TIMEOUT_S, max(deadline.remaining(), 0.05)),
                )
                for reply in replies or []:
                    pending.difference_update(reply)
            if not flower_up:
                flower_up = port_open(FLOWER_HOST, self.options.flower_port)
            if not pending and flower_up:
                return time.monotonic() - started
            if deadline.expired():
                missing = sorted(pending) + ([] if flower_up else ["flower"])
                raise FleetError(
                    f"fleet not ready after {timeout:.0f}s; no answer from: "
                    f"{', '.join(missing)} (logs in {self.log_dir})"
                )
            if not pending:
                deadline.pause()

    def watches(self) -> list[Watched]:
        """What :meth:`supervise` keeps running: the embedded servers this fleet started
        (first: workers restart only once the broker is back), then every child."""
        urls = self.resolve()
        items: list[Watched] = []
        if self.started_stack:
            stack = EmbeddedStack(self.data_dir)
            items.append(ServiceWatch(stack, "redis", urls.redis_url))
            items.append(ServiceWatch(stack, "postgres", urls.database_url))
        items.extend(self.watch(c) for c in self.children)
        return items

    def watch(self, child: Child) -> ChildWatch:
        """How the supervisor watches ``child`` (one pinger for the whole fleet)."""
        if self._pinger is None:
            self._pinger = Pinger(self.control_app)
        limit = self.silence_limit(child)
        ready_dir = self.data_dir / READY_DIR_NAME
        return ChildWatch(
            child, self.relaunch, self._pinger, self.options.flower_port, limit, ready_dir
        )

    def silence_limit(self, child: Child) -> float:
        """Seconds worker ``child`` may answer no ping before it is restarted (0: never).

        ``TASKFLEET_RESILIENCE_WORKER_SILENCE``; a solo worker answers nothing while it runs
        a job, so it gets at least the hard time limit (which ends any job) and a margin.
        """
        limit = get_resilience_settings().worker_silence
        if child.nodename is None or limit <= 0:
            return 0.0
        if child.pool == "solo":
            return max(limit, self.settings.hard_time_limit + SOLO_SILENCE_MARGIN_S)
        return limit

    def supervise(
        self,
        interval: float = SUPERVISE_INTERVAL_S,
        *,
        policy: RestartPolicy | None = None,
        on_event: Callable[[Event], None] | None = None,
        until: Callable[[], bool] = lambda: False,
    ) -> None:
        """Keep every child (and the embedded servers this fleet started) running; block.

        A child that dies is restarted after an exponential backoff; every death, restart
        and recovery is passed to ``on_event`` and saved in ``<data dir>/fleet-status.json``.
        Returns when ``until()`` is true (checked every ``interval``; a harness that runs
        this in a thread stops it so), else only by an exception (KeyboardInterrupt for
        SIGTERM and Ctrl-C).

        Raises:
            GaveUp: A child crashed too often in a short window (see :mod:`.restarts`).
            FleetError: An embedded server came back on another port.
        """
        status = StatusFile(self.data_dir)
        notify = on_event or (lambda _event: None)

        def record(event: Event) -> None:
            status.add(event)
            status.write(supervisor.status())
            notify(event)

        supervisor = self.supervisor = Supervisor(self.watches(), policy, record)
        supervisor.tick()  # learn the servers' pids before the first status
        status.write(supervisor.status())
        self.scaler = slot_scaler(self)
        while not until():
            supervisor.tick()
            if self.scaler is not None and self.scaler.step():
                status.write(supervisor.status())
            time.sleep(interval)

    # ------------------------------------------------------------------ stopping

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Stop every child, then the embedded stack if this fleet started it.

        Each child gets SIGTERM (a worker's warm shutdown: it finishes its running jobs
        and stops its pool and persister itself) and ``timeout`` seconds; then its whole
        process group is killed. Whatever a child left behind in its group is terminated
        too. A KeyboardInterrupt while waiting kills at once. Idempotent.

        Args:
            timeout: Seconds children get after SIGTERM.

        Raises:
            taskfleet.devstack.DevStackError: The embedded stack could not be stopped.
        """
        if self.scaler is not None:
            self.scaler.close()
            self.scaler = None
        stop_children(self.children, timeout, KILL_TIMEOUT_S)
        if self._control_app is not None:
            self._control_app.close()
            self._control_app = None
        if self.started_stack and not self.options.keep_services and not self.stack_stopped:
            EmbeddedStack(self.data_dir).stop()
            self.stack_stopped = True

    def leftovers(self) -> list[int]:
        """Pids still alive in the children's process groups (empty after a clean stop)."""
        return [p for c in self.children if c.pid is not None for p in group_members(c.pid)]
