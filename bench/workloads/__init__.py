"""One module per workload; each drives every system through :class:`bench.systems.base.System`."""
