"""Beat-scheduled autoscaler: measure each pool, decide with a pure policy, resize workers.

Modules: ``measure`` (depths, in-flight, rates, live workers), ``policy`` (pure parts and
``decide``), ``actuate`` (``pool_grow``/``pool_shrink``), ``store`` (lock, gate, memory,
decision log in Redis), ``tick`` (one tick), ``schedule`` (beat entry), ``tasks`` (the beat
task), ``cli`` (``taskfleet scale``). Nothing is imported here, so ``taskfleet.app`` can
import ``schedule`` without a cycle.
"""
