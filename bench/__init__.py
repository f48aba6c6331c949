"""Benchmarks: taskfleet against stock Celery, Dramatiq and RQ (``python -m bench``)."""
