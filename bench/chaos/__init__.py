"""The chaos harness: crash safety you can count (``python -m bench.chaos``).

Each scenario starts its own Redis and PostgreSQL (temp dir, free loopback port), a live
fleet of ``celery -A taskfleet.app worker`` processes on queues of its own, and a producer
of ``diag.record`` jobs, each of which appends its executions to a log in Redis. It injects
one fault (a SIGKILL, a service restart, an outage, two beats at once, a SIGTERM), waits for
recovery and for the fleet to settle (each with a deadline), and counts: sent, ok, lost,
duplicated (executions beyond the first), dead-lettered, and the time to recover as the
scenario defines it. See RELIABILITY.md.

Modules: :mod:`~bench.chaos.cli` (command line), :mod:`~bench.chaos.scenarios` (the
registry), :mod:`~bench.chaos.scenarios_workers`, :mod:`~bench.chaos.scenarios_services`
and :mod:`~bench.chaos.scenario_beat` (the scenarios), :mod:`~bench.chaos.run` (one
scenario's world and sizes), :mod:`~bench.chaos.servers`, :mod:`~bench.chaos.fleet`,
:mod:`~bench.chaos.load` (what it starts), :mod:`~bench.chaos.ledger` and
:mod:`~bench.chaos.settle` (counting), :mod:`~bench.chaos.report` (table and files).
"""
