"""uda_jax: unsupervised domain adaptation (CGDM, MetaAlign and baselines) in JAX."""

__version__ = "0.1.0"

import time as _time

START_TIME = _time.perf_counter()  # the status lines count seconds from here (before JAX loads)
