"""A network partition between one worker and Redis, on interfaces the harness creates.

The harness makes a network namespace and a veth pair of its own, with a /30 it picks in
``10.213.0.0/16`` after checking that no address or route of the machine overlaps it. Redis
binds the host end's address only; the victim worker runs inside the namespace and reaches
Redis over the pair, while the survivor worker and the harness reach the same address from
the host side. Cutting the namespace's end of the pair (``ip link set ... down`` inside the
namespace) partitions the victim alone: its packets have no route, its open connections
stall. Nothing else on the machine is touched, and no other address is contacted. Linux and
root only (``ip netns``); skipped otherwise.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import subprocess
import uuid
from types import TracebackType

from bench.chaos.report import Row
from bench.chaos.run import ChaosRun, Size, Waiter, now, poll, since

IP = "ip"
SUPERNET = ipaddress.IPv4Network("10.213.0.0/16")
SUBNET_PREFIX = 30
SUBNET_TRIES = 64
IP_TIMEOUT_S = 10.0
PARTITION_RECOVERY = (
    "from cutting the victim's link to the first completion, by another worker, of a job "
    "the partitioned worker was running (its jobs must all complete within the deadline)"
)


def _ip(*args: str, netns: str | None = None) -> str:
    prefix = [IP, "netns", "exec", netns, IP] if netns else [IP]
    done = subprocess.run(
        [*prefix, *args], check=True, capture_output=True, text=True, timeout=IP_TIMEOUT_S
    )
    return done.stdout


def _taken() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the machine has an address or a (non-default) route in."""
    nets: list[ipaddress.IPv4Network] = []
    for line in _ip("-4", "-o", "addr", "show").splitlines():
        fields = line.split()
        if "inet" in fields:
            nets.append(ipaddress.IPv4Interface(fields[fields.index("inet") + 1]).network)
    for line in _ip("-4", "route", "show", "table", "all").splitlines():
        # "10.0.0.0/8 via ...", "local 127.0.0.1 dev lo ...": the destination is the first
        # field that is an address ("default" routes overlap everything and are skipped).
        dest = next((f for f in line.split()[:2] if f[:1].isdigit()), None)
        if dest is not None:
            nets.append(ipaddress.IPv4Network(dest if "/" in dest else f"{dest}/32", strict=False))
    return nets


class Partition:
    """A namespace and a veth pair with a private /30; removed on exit, whatever happened."""

    def __init__(self) -> None:
        """Pick names; nothing is created before :meth:`__enter__`."""
        tag = uuid.uuid4().hex[:6]
        self.netns = f"tfchaos-{tag}"
        self.host_dev, self.peer_dev = f"tfch{tag}", f"tfcn{tag}"
        self.host_ip = self.peer_ip = ""

    @staticmethod
    def available() -> str | None:
        """Why the partition cannot be made here, or None when it can."""
        if not shutil.which(IP):
            return "no `ip` command"
        if os.geteuid() != 0:
            return "needs root for `ip netns`"
        return None

    def _subnet(self) -> ipaddress.IPv4Network:
        taken = _taken()
        subnets = list(SUPERNET.subnets(new_prefix=SUBNET_PREFIX))
        for subnet in random.sample(subnets, SUBNET_TRIES):
            if not any(subnet.overlaps(net) for net in taken):
                return subnet
        raise RuntimeError(f"no free /{SUBNET_PREFIX} in {SUPERNET}")

    def __enter__(self) -> Partition:
        """Create the namespace and the pair, address both ends, bring them up."""
        host, peer = list(self._subnet().hosts())[:2]
        self.host_ip, self.peer_ip = str(host), str(peer)
        try:
            _ip("netns", "add", self.netns)
            _ip("link", "add", self.host_dev, "type", "veth", "peer", "name", self.peer_dev)
            _ip("link", "set", self.peer_dev, "netns", self.netns)
            _ip("addr", "add", f"{host}/{SUBNET_PREFIX}", "dev", self.host_dev)
            _ip("link", "set", self.host_dev, "up")
            _ip("addr", "add", f"{peer}/{SUBNET_PREFIX}", "dev", self.peer_dev, netns=self.netns)
            _ip("link", "set", self.peer_dev, "up", netns=self.netns)
            _ip("link", "set", "lo", "up", netns=self.netns)
        except BaseException:
            self._remove()
            raise
        return self

    def cut(self) -> None:
        """Partition: take the namespace's end of the pair down."""
        _ip("link", "set", self.peer_dev, "down", netns=self.netns)

    def heal(self) -> None:
        """Bring the namespace's end back up (its address and route come back with it)."""
        _ip("link", "set", self.peer_dev, "up", netns=self.netns)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Delete the pair and the namespace."""
        self._remove()

    def _remove(self) -> None:
        for args in (("link", "del", self.host_dev), ("netns", "del", self.netns)):
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip(*args)  # fails when never created, or already gone with the namespace


def partition_worker(size: Size, waiter: Waiter = poll) -> Row:
    """Cut one of two prefork workers off Redis mid-run; heal once its jobs ran elsewhere."""
    name = "network-partition"
    row = Row(name, PARTITION_RECOVERY)
    why_not = Partition.available()
    if why_not:
        row.skipped = why_not
        return row
    with Partition() as net, ChaosRun(name, size, waiter, redis_host=net.host_ip) as run:
        # The persister needs Postgres, which listens on the host's loopback only.
        victim = run.cpu_worker("cpu-victim", netns=net.netns, TASKFLEET_NO_PERSISTER="1")
        run.cpu_worker("cpu-survivor")
        run.fleet.wait_ready()
        run.producer.backlog(size.jobs)
        run.producer.start(size.rate)
        run.running_on(victim)
        pids = victim.tree()
        fault_at = now()
        net.cut()
        try:
            affected = run.ledger.executions().running_on(pids, before=fault_at)
            row.mid_execution = len(affected)
            done = run.await_jobs(affected, f"the {len(affected)} partitioned worker's jobs")
            first = run.ledger.executions().first_done_after(fault_at, affected, pids)
            row.recover_s = since(fault_at, first) if done else None
            if not done:
                row.problems.append(f"partitioned worker's jobs not done in {size.recover_s:.0f}s")
        finally:
            healed_at = now()
            net.heal()
        row.notes.append(f"partitioned {healed_at - fault_at:.1f}s")
        return run.count(row)
