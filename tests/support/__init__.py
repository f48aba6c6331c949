"""Helpers shared by the test suites: services, worker processes, waiting with deadlines."""
