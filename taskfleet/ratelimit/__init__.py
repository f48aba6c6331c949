"""Fleet-wide rate limits (per client at enqueue, per kind and client at execution) and
admission control under overload.

Importing this package imports nothing else: :mod:`taskfleet.client` reaches only
:mod:`~taskfleet.ratelimit.errors`, :mod:`~taskfleet.ratelimit.policies` and the stores, and
the worker side (:mod:`~taskfleet.ratelimit.middleware`) is loaded with the job modules.
"""
