"""Keeps XLA's per-step CPU working memory mapped between steps, so steps stop page-faulting.

On CPU, XLA allocates one temporary buffer per execution of a compiled step (hundreds of MB for
a ResNet-50 step at small batches) and frees it at the end. glibc's malloc serves a block that
large with a fresh ``mmap`` and returns it with ``munmap``, so every step page-faults its whole
working memory back in, and the kernel zeroes each page first: a noticeable share of a step
in system time (``benchmarks/step_speed.py`` reports page faults and system time). PyTorch's
many smaller blocks come from malloc's heap and do not fault.

:func:`reuse_cpu_buffers` makes the block come from malloc's heap and stay there:

* ``jax_cpu_enable_async_dispatch = False``: a one-device CPU computation runs in the calling
  thread, whose allocations use malloc's main heap. With async dispatch they come from a worker
  thread, whose per-thread heap is capped at 64 MB, so a larger block is always mapped afresh.
  JAX's client reads the option when it starts, so this must come before the first JAX call
  that starts a backend.
* ``mallopt(M_MMAP_MAX, 0)`` and ``mallopt(M_TRIM_THRESHOLD, -1)``: large blocks from the heap
  (not fresh mappings) and freed memory kept for reuse instead of being returned to the system.

The values computed are the same. The costs: the process keeps its peak memory mapped after a
step instead of returning it, and Python waits for each step instead of preparing the next
batch meanwhile. So ``cpu_tuning: auto`` (:func:`uda_jax.cpu.tuning`) reuses the buffers for
ResNet backbones only: the LeNet digits demo ran fewer steps per second with them reused (its
buffers fit the per-thread heaps and did not fault).
"""

from __future__ import annotations

import ctypes
import functools
import platform
import sys

import jax

ASYNC_DISPATCH = "jax_cpu_enable_async_dispatch"
M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
NEVER_TRIM = -1  # man mallopt: "Setting M_TRIM_THRESHOLD to -1 disables trimming completely"


@functools.cache
def _glibc_mallopt():
    """glibc's ``mallopt``, or None off Linux/glibc (macOS, musl), where this does nothing."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt


def _backend_started() -> bool:
    """Whether JAX has created its backends (after which the dispatch option has no effect)."""
    from jax._src import xla_bridge  # no public equivalent in JAX 0.10

    return xla_bridge.backends_are_initialized()


def reuse_cpu_buffers() -> bool:
    """Makes XLA's per-step CPU buffers come from malloc's heap and stay mapped between steps.

    Call it once, before the first JAX computation (:func:`uda_jax.cpu.prepare_process` does
    where the setting wants it). Returns True when applied; False where it cannot be: not Linux with
    glibc, or JAX's backend already started (then nothing is changed). Safe to call again. It
    changes no value; it affects one-device CPU computations (a mesh of several CPU devices
    runs on per-device threads, as before).
    """
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    if not _backend_started():
        jax.config.update(ASYNC_DISPATCH, False)
    elif jax.config.values[ASYNC_DISPATCH]:
        return False  # too late: the CPU client already dispatches from a worker thread
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
