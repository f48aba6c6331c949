"""Two real ``celery beat`` processes at once: the autoscaler must decide once per tick.

Both beats send the tick task every interval, so the I/O worker runs two ticks per
interval; the tick lock and gate (``taskfleet.scheduler.store``) must let exactly one of them
decide. The row counts decisions in the autoscaler's log against the ticks each beat sent.
"""

from __future__ import annotations

import itertools
import time

from bench.chaos.report import Row
from bench.chaos.run import ChaosRun, Size, Waiter, now, poll
from taskfleet.scheduler.schedule import SCHEDULE_NAME
from taskfleet.scheduler.store import GATE_FRACTION, AutoscaleStore

#: Longer than a tick takes here (about 1.1 s: inspect calls of INSPECT_TIMEOUT_S each), so
#: a tick never finds the previous one still holding the lock.
BEAT_INTERVAL_S = 2.0
INSPECT_TIMEOUT_S = 0.3
BEATS = 2
#: A decision closer than this to the previous one means a tick decided twice.
GAP_TOLERANCE_S = 0.05
HISTORY_LIMIT = 10_000
BEAT_START_TIMEOUT_S = 60.0
BEAT_ARGV = ("celery", "-A", "taskfleet.app", "beat", "-l", "INFO", "--pidfile=")
SENT_LINE = f"Sending due task {SCHEDULE_NAME}"
BEAT_RECOVERY = "no fault to recover from: two beats run side by side for the whole scenario"
AUTOSCALE_ENV = {
    "TASKFLEET_AUTOSCALE_INTERVAL": str(BEAT_INTERVAL_S),
    "TASKFLEET_AUTOSCALE_INSPECT_TIMEOUT": str(INSPECT_TIMEOUT_S),
}


def double_decisions(times: list[float], interval: float) -> int:
    """Decisions made less than the gate's window after the previous one."""
    ordered = sorted(times)
    window = interval * GATE_FRACTION - GAP_TOLERANCE_S
    return sum(1 for a, b in itertools.pairwise(ordered) if b - a < window)


def two_beats(size: Size, waiter: Waiter = poll) -> Row:
    """Run two beats ``beat_s`` seconds past their first ticks over a fleet under light load; count decisions."""
    name = "two-beats"
    row = Row(name, BEAT_RECOVERY)
    with ChaosRun(name, size, waiter) as run:
        run.fleet.env.update(AUTOSCALE_ENV)
        run.cpu_worker("cpu")
        run.io_worker("io")  # runs the ticks
        run.fleet.wait_ready()
        run.producer.backlog(size.jobs)
        run.producer.start(size.rate)
        started_at = now()
        beats = [
            run.fleet.spawn(f"beat-{i}", [*BEAT_ARGV, "-s", str(run.tmp / f"beat-{i}-schedule")])
            for i in range(BEATS)
        ]
        waiter(
            lambda: all(SENT_LINE in b.log.read_text(errors="replace") for b in beats),
            BEAT_START_TIMEOUT_S,
            "both beats to send their first tick",
        )
        deadline = time.monotonic() + size.beat_s
        while time.monotonic() < deadline and all(b.alive() for b in beats):
            time.sleep(BEAT_INTERVAL_S / 4)  # the beats run; nothing is asserted here
        for beat in beats:
            if not beat.alive():
                row.problems.append(f"{beat.name} exited: {beat.log_tail()[-300:]}")
            beat.popen.terminate()
            beat.popen.wait(10)
        waiter(lambda: run.settler.backlog().queued == 0, size.recover_s, "the last ticks")
        sent = [b.log.read_text(errors="replace").count(SENT_LINE) for b in beats]
        store = AutoscaleStore(run.ledger.redis, BEAT_INTERVAL_S)
        history = store.history(HISTORY_LIMIT)
        decided = [
            e["at"] for e in history if e.get("status") == "decided" and e["at"] >= started_at
        ]
        ticks = max(sent) if sent else 0
        doubles = double_decisions(decided, BEAT_INTERVAL_S)
        row.extra |= {"decisions": len(decided), "ticks": ticks, "tick_messages": sent}
        row.notes.append(
            f"{len(decided)} decisions for {ticks} ticks ({'+'.join(map(str, sent))} tick "
            f"messages from {BEATS} beats, interval {BEAT_INTERVAL_S:.0f}s)"
        )
        if doubles:
            row.problems.append(f"{doubles} ticks decided twice")
        if not decided:
            row.problems.append("no decision logged")
        elif len(decided) > ticks + 1:
            row.problems.append(f"{len(decided)} decisions > {ticks} ticks")
        elif len(decided) < ticks - 1:
            row.problems.append(f"{ticks - len(decided)} ticks without a decision")
        return run.count(row)
