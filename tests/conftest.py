"""Strict JAX numerics for every test: shape and dtype slips fail loudly (DESIGN, tests).

Tests that need several devices run in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the flag must be set before JAX starts).
"""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The embedded-data cache of the test session, never the user's (set before any fixture runs).
os.environ["UDA_JAX_CACHE"] = tempfile.mkdtemp(prefix="uda_jax_test_cache_")
# One persistent XLA compilation cache for the session and its subprocesses: the many tests that
# build the same train steps compile each once (it cuts the suite's time by about half).
os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="uda_jax_test_xla_cache_")
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def float64():
    """Runs a test with 64-bit floats, for comparisons with finite differences."""
    with jax.enable_x64(True):
        yield
