"""Flower's Broker page, run the way ``taskfleet up`` runs it, lists taskfleet's queues.

A Flower of this test's own, on a free loopback port, through
``taskfleet.observability.flower_broker``, over queues no worker consumes: the page lists
the CPU and I/O queues with their depths, every priority summed. On Redis (every priority
sub-list summed by Flower's Redis client) and on RabbitMQ without the management plugin
(one ``x-max-priority`` queue each, read over AMQP by ``flower_amqp``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from taskfleet.app_config import create_app
from taskfleet.config import load_settings
from taskfleet.devstack.common import choose_port
from taskfleet.fleet.plan import FLOWER_SHIM
from taskfleet.routing.priority import MAX_PRIORITY
from taskfleet.workers.profiles import APP_PATH
from tests.support.services import delete_amqp_queues
from tests.support.waiting import wait_for

LOOPBACK = "127.0.0.1"
USER, PASSWORD = "admin", f"pw-{uuid.uuid4().hex}"
FLOWER_START_DEADLINE_S = 60.0
PAGE_DEADLINE_S = 20.0
#: Jobs put on each queue, by priority: the page must show their sums.
CPU_JOBS = {7: 3, 0: 2, 9: 1}
IO_JOBS = {5: 4}
#: The test stack's Redis database the Redis case has to itself.
PRIVATE_DB = 10


@pytest.fixture(params=["redis", "amqp"])
def idle_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The broker's environment (``redis_env`` or ``amqp_env``) with queues of this test's own,
    deleted afterwards."""
    suffix = uuid.uuid4().hex[:6]
    env = {
        **request.getfixturevalue(f"{request.param}_env"),
        "TASKFLEET_CPU_QUEUE": f"cpu-flower-{suffix}",
        "TASKFLEET_IO_QUEUE": f"io-flower-{suffix}",
    }
    if request.param == "redis":
        # A database of its own: Flower lists the queues of the workers it finds (by a control
        # broadcast), and the session's fleets on the shared database would replace ours.
        url = urlsplit(env["TASKFLEET_BROKER_URL"])._replace(path=f"/{PRIVATE_DB}").geturl()
        env["TASKFLEET_BROKER_URL"] = env["TASKFLEET_REDIS_URL"] = url
        redis.Redis.from_url(url).flushdb()
    yield env
    if request.param == "amqp":
        delete_amqp_queues(env)
        return
    redis.Redis.from_url(env["TASKFLEET_BROKER_URL"]).flushdb()


@pytest.fixture
def flower_url(idle_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    port = choose_port(None, set())
    env = {**idle_env, "FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"}
    argv = [sys.executable, "-m", FLOWER_SHIM, "-A", APP_PATH, "flower"]
    argv += [f"--port={port}", f"--address={LOOPBACK}", f"--db={tmp_path / 'flower.db'}"]
    log = open(tmp_path / "flower.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://{LOOPBACK}:{port}"

    def answers() -> bool:
        assert proc.poll() is None, (tmp_path / "flower.log").read_text()[-3000:]
        try:
            return httpx.get(f"{url}/healthcheck", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(answers, FLOWER_START_DEADLINE_S, "Flower to answer")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def depth_on_page(html: str, queue: str) -> int | None:
    """The Messages column of ``queue``'s row, or None if the page has no such row."""
    row = re.search(rf"<td>{re.escape(queue)}</td>\s*<td[^>]*>\s*([^<\s]+)\s*</td>", html)
    return int(row.group(1)) if row else None


def row_cells(html: str, queue: str) -> list[str]:
    """The text of each cell in ``queue``'s row (entities decoded, tags dropped)."""
    row = re.search(rf"<tr id=\"{re.escape(queue)}\">(.*?)</tr>", html, re.DOTALL)
    assert row, f"no row for {queue}"
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.DOTALL)
    return [unescape(re.sub(r"<[^>]+>", "", cell)).strip() for cell in cells]


def test_broker_page_lists_cpu_and_io_with_their_depths(
    idle_env: dict[str, str], flower_url: str
) -> None:
    settings = load_settings(
        **{
            k.removeprefix("TASKFLEET_").lower(): v
            for k, v in idle_env.items()
            if k.startswith("TASKFLEET_")
        }
    )
    app = create_app(settings)
    cpu, io = settings.cpu_queue, settings.io_queue
    for queue, jobs in ((cpu, CPU_JOBS), (io, IO_JOBS)):
        for priority, count in jobs.items():
            for _ in range(count):
                app.send_task("cpu.noop", queue=queue, priority=priority)
    if settings.broker_is_amqp:
        assert_declared_as_taskfleet_declares(app, (cpu, io))

    def page() -> str | None:
        html = httpx.get(f"{flower_url}/broker", auth=(USER, PASSWORD), timeout=10).text
        found = (depth_on_page(html, cpu), depth_on_page(html, io))
        return html if found == (sum(CPU_JOBS.values()), sum(IO_JOBS.values())) else None

    html = wait_for(page, PAGE_DEADLINE_S, "the Broker page to list both queues with their depths")
    assert "is not supported" not in html
    # The broker URL shown has a scheme, not a class path.
    assert ("amqp://" if settings.broker_is_amqp else "redis://") in html
    if settings.broker_is_amqp:
        # Read over AMQP: ready messages and consumers; unacked unknown (a dash); a queue
        # never declared (the dead-letter queue: no worker started) left out.
        io_jobs = str(sum(IO_JOBS.values()))
        assert row_cells(html, io) == [io, io_jobs, "\u2014", io_jobs, "0", "\u2014"]
        assert depth_on_page(html, f"{io}{settings.dlq_suffix}") is None
    # The same page as a person sees it: loaded and rendered by headless Chromium.
    rendered = chromium_dom(flower_url.replace("://", f"://{USER}:{PASSWORD}@") + "/broker")
    assert depth_on_page(rendered, cpu) == sum(CPU_JOBS.values()), rendered[-3000:]
    assert depth_on_page(rendered, io) == sum(IO_JOBS.values())


def assert_declared_as_taskfleet_declares(app: Any, queues: tuple[str, ...]) -> None:
    """``send_task`` declared each queue as taskfleet's topology does: re-declaring it with
    that declaration (``x-max-priority``, dead-lettering) succeeds only if the arguments are
    equal (RabbitMQ answers 406 PRECONDITION_FAILED otherwise), so every priority of a queue
    is one RabbitMQ queue, whose depth is the sum."""
    with app.connection_for_write() as conn:
        channel = conn.channel()
        for name in queues:
            declared = app.amqp.queues[name]
            assert declared.queue_arguments["x-max-priority"] == MAX_PRIORITY
            declared(channel).declare()


#: Headless, and nothing but the page: no background requests to anyone.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
    "--disable-background-networking", "--disable-component-update", "--disable-extensions",
    "--disable-default-apps", "--disable-domain-reliability", "--metrics-recording-only",
    "--no-pings", "--disable-client-side-phishing-detection", "--dns-prefetch-disable",
)  # fmt: skip
CHROMIUM_TIMEOUT_S = 60.0


def chromium_dom(url: str) -> str:
    """The DOM of ``url`` after headless Chromium loaded and ran it (``--dump-dom``)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        reason = "needs Debian's chromium (`make test-tools` installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with tempfile.TemporaryDirectory(prefix="tf-chromium-") as profile:
        done = subprocess.run(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
            capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
