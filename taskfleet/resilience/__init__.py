"""What happens when jobs fail: retries, circuit breakers, dead letters and their replay.

* ``middleware`` -- the job middleware (dead letters and poison pills, retries, breakers);
  ``consumer`` dead-letters messages no task can handle.
* ``retry`` -- retry policies (tenacity strategies).
* ``breaker`` -- fleet-wide circuit breakers; their state in ``storage`` (Redis, chosen by
  URL), ``memory_storage`` (one process) and ``storage_base`` (what both share).
* ``runtime`` -- the per-process settings, Redis clients, breakers and event feed.
* ``deadletter``, ``broker_dlq``, ``dlq``, ``cli`` -- dead-letter records, RabbitMQ's
  dead-letter queues, inspect/replay/purge and ``taskfleet dlq``.
* ``testing_jobs`` -- ``diag.*`` jobs that fail on purpose.

Nothing is imported here: each module is imported where it is used.
"""
