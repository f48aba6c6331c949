"""W8: the memory soak (``python -m bench.soak``); see :mod:`bench.soak.cli`."""
