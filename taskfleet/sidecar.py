"""The heartbeat sidecar process: ``python -m taskfleet.sidecar``, one per worker.

Started by its worker (``taskfleet.workers.heartbeat``, which explains the design). It keeps
the worker's ``alive`` key fresh while the worker process lives, looks for dead consumers
every ``reclaim_interval`` (jittered), and restores the worker's own deliveries as soon as
the worker process exits; with worker groups, each watch also moves the jobs of a group left
without a live consumer to one that has (``taskfleet.group_sweep``). Restoring needs kombu
and redis-py (~50 MiB), which the sidecar never imports: it runs ``python -m
taskfleet.routing.reclaim`` as a short-lived child when there is something to restore, and
talks to Redis itself through ``taskfleet.resp``, so it stays at a few MiB for the worker's
whole life. Only the standard library is imported here.
"""

from __future__ import annotations

import json
import logging
import os
import random
import select
import signal
import subprocess
import sys
import time
from typing import Any

from taskfleet.group_sweep import sweep
from taskfleet.resp import Client, ReplyError, connect

log = logging.getLogger("taskfleet.sidecar")

CONFIG_ENV = "TASKFLEET_HEARTBEAT_CONFIG"
RECLAIM_ENV = "TASKFLEET_RECLAIM_CONFIG"
READY_LINE = b"ready\n"
#: Fraction by which each reclaim interval is randomly stretched or shortened.
RECLAIM_JITTER = 0.3
#: How often the parent is checked where pidfds are unavailable.
PARENT_POLL_S = 0.25
REDIS_TIMEOUT_S = 5.0
#: Longest the sidecar of an exited worker waits for its deliveries to be restored.
LAST_RECLAIM_TIMEOUT_S = 60.0
LAST_RECLAIM_TRIES = 3
#: One reclaimer child in the fleet at a time: each sidecar that sees a dead consumer takes
#: this lock (expiring, released by the child) before starting one.
RECLAIM_LOCK_S = 10.0
IGNORED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
LOG_FORMAT = "[%(asctime)s: %(levelname)s/heartbeat %(process)d] %(message)s"
#: Forget a dead owner that holds nothing, unless it came back or a late record landed.
FORGET_LUA = (
    "if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[2]) == 0 then "
    "return redis.call('ZREM', KEYS[3], ARGV[1]) end return 0"
)


class Sidecar:
    """Heartbeat, dead-consumer watch and last restore of one worker.

    Args:
        config: What :func:`taskfleet.workers.heartbeat.start_sidecar` passed (owner,
            parent pid, timings, key names, and the broker settings for the reclaimer).
        client: Redis (see :mod:`taskfleet.resp`).
    """

    def __init__(self, config: dict[str, Any], client: Client) -> None:
        self.config, self.client = config, client
        self.owner: str = config["owner"]
        self.parent: int = config["parent"]
        self._reclaim: subprocess.Popen[bytes] | None = None
        try:
            self._pidfd: int | None = os.pidfd_open(self.parent)
        except (AttributeError, OSError):  # not Linux >= 5.3: poll the parent pid instead
            self._pidfd = None

    def _key(self, kind: str, owner: str) -> str:
        return str(self.config[f"{kind}_key"]).replace("{owner}", owner)

    def beat(self) -> None:
        """Refresh the owner's alive key and its place in the registry (one round trip)."""
        ttl_ms = int(self.config["ttl"] * 1000)
        now = time.time()
        stale = repr(now - self.config["forget_after"])
        consumed = self.config.get("consumer_keys", ())
        self._execute(
            ["SET", self._key("alive", self.owner), 1, "PX", ttl_ms],
            ["ZADD", self.config["registry_key"], repr(now), self.owner],
            *(["ZADD", key, repr(now), self.owner] for key in consumed),
            *(["ZREMRANGEBYSCORE", key, "-inf", stale] for key in consumed),
        )

    def watch(self) -> None:
        """One pass: restore (in a child) if a dead owner holds deliveries; forget empty ones."""
        listed, _, info = self._execute(
            ["ZRANGE", self.config["registry_key"], 0, -1, "WITHSCORES"],
            ["HINCRBY", self.config["stats_key"], "passes", 1],
            ["INFO", "server"],
        )
        if _uptime(info) < self.config["restart_grace"]:
            return  # Redis restarted: live workers first get a heartbeat to say so again
        if self.config.get("group_pools"):
            pools, ttl = self.config["group_pools"], self.config["ttl"]
            if moved := sweep(self._execute, pools, time.time(), ttl):
                log.info("moved %d jobs from worker groups without a live consumer", moved)
        owners = [(listed[i].decode(), float(listed[i + 1])) for i in range(0, len(listed), 2)]
        if not owners:
            return
        alive = self._execute(*(["EXISTS", self._key("alive", o)] for o, _ in owners))
        dead = [(o, seen) for (o, seen), up in zip(owners, alive, strict=True) if not up]
        if not dead:
            return
        held = self._execute(*(["HLEN", self._key("tags", o)] for o, _ in dead))
        cutoff = time.time() - self.config["forget_after"]
        forget = [o for (o, seen), n in zip(dead, held, strict=True) if not n and seen < cutoff]
        if forget:
            self._execute(*(self._forget(o) for o in forget))
        if any(held) and self._take_lock():
            self.start_reclaim(release_lock=True)

    def start_reclaim(
        self, owner: str | None = None, release_lock: bool = False
    ) -> subprocess.Popen[bytes] | None:
        """Run the reclaimer in a child (unless one still runs); ``owner`` first if given."""
        if self._reclaim is not None and self._reclaim.poll() is None:
            return None
        names = ("broker_url", "transport_options", "forget_after", "restart_grace")
        job = {k: self.config[k] for k in names}
        lock = self.config["lock_key"] if release_lock else None
        env = {**os.environ, RECLAIM_ENV: json.dumps({**job, "owner": owner, "lock": lock})}
        command = [sys.executable, "-m", "taskfleet.routing.reclaim"]
        self._reclaim = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)
        return self._reclaim

    def run(self) -> None:
        """Beat and watch until the worker process exits, then restore what it held."""
        next_beat = time.monotonic() + self.config["interval"]
        next_watch = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= next_beat:
                self._logged(self.beat)
                next_beat = now + self.config["interval"]
            if now >= next_watch:
                self._logged(self.watch)
                spread = random.uniform(1 - RECLAIM_JITTER, 1 + RECLAIM_JITTER)
                next_watch = now + self.config["reclaim_interval"] * spread
            if self._parent_exited(min(next_beat, next_watch) - time.monotonic()):
                break
        self.on_parent_exit()

    def on_parent_exit(self) -> None:
        """The worker is gone: it is no live consumer any more (its last beat is backdated
        by a TTL), and its deliveries go back now, not after the TTL."""
        consumed = self.config.get("consumer_keys", ())
        if consumed:
            gone = repr(time.time() - self.config["ttl"])
            self._logged(lambda: self._execute(*(["ZADD", k, gone, self.owner] for k in consumed)))
        if self._reclaim is not None:
            self._wait(self._reclaim)
        for _ in range(LAST_RECLAIM_TRIES):
            child = self.start_reclaim(self.owner)
            if child is not None and self._wait(child) == 0:
                log.info("worker %s exited; its deliveries were restored", self.owner)
                return
        log.error("worker %s exited; its deliveries wait for another reclaimer", self.owner)

    def _wait(self, child: subprocess.Popen[bytes]) -> int | None:
        try:
            return child.wait(LAST_RECLAIM_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            return None

    def _take_lock(self) -> bool:
        lock_ms = int(RECLAIM_LOCK_S * 1000)
        return (
            self._execute(["SET", self.config["lock_key"], self.owner, "NX", "PX", lock_ms])[0]
            is not None
        )

    def _forget(self, owner: str) -> list[Any]:
        keys = [self._key("alive", owner), self._key("tags", owner), self.config["registry_key"]]
        return ["EVAL", FORGET_LUA, len(keys), *keys, owner]

    def _execute(self, *commands: list[Any]) -> list[Any]:
        replies = self.client.execute(commands)
        errors = [r for r in replies if isinstance(r, ReplyError)]
        if errors:
            raise errors[0]
        return replies

    def _logged(self, step: Any) -> None:
        try:
            step()
        except Exception as exc:  # Redis away (or refusing): try again next time, never exit
            log.warning("%s failed: %r", step.__name__, exc)

    def _parent_exited(self, timeout: float) -> bool:
        timeout = max(timeout, 0.0)
        if self._pidfd is not None:
            readable, _, _ = select.select([self._pidfd], [], [], timeout)
            return bool(readable) or os.getppid() != self.parent
        deadline = time.monotonic() + timeout
        while os.getppid() == self.parent:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, PARENT_POLL_S))
        return True


def _uptime(info: Any) -> float:
    """``uptime_in_seconds`` from INFO's reply (raw text, or redis-py's parsed dict)."""
    if isinstance(info, dict):
        return float(info.get("uptime_in_seconds", float("inf")))
    for line in info.splitlines():
        if line.startswith(b"uptime_in_seconds:"):
            return float(line.split(b":", 1)[1])
    return float("inf")  # not reported: no grace


def main() -> None:
    """Entry point; the worker waits for :data:`READY_LINE` (sent after the first beat)."""
    for signum in IGNORED_SIGNALS:  # a warm shutdown still runs jobs: leave with the worker
        signal.signal(signum, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    config = json.loads(os.environ[CONFIG_ENV])
    sidecar = Sidecar(config, connect(config["broker_url"], REDIS_TIMEOUT_S))
    while True:  # Redis may still be starting: the worker waits (and gives up) on its side
        try:
            sidecar.beat()
            break
        except Exception as exc:
            if os.getppid() != sidecar.parent:
                return
            log.warning("first heartbeat failed, retrying: %r", exc)
            time.sleep(config["interval"])
    sys.stdout.buffer.write(READY_LINE)
    sys.stdout.flush()
    sidecar.run()


if __name__ == "__main__":
    main()
