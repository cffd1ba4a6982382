"""Strict JAX numerics for every test: shape and dtype slips fail loudly (DESIGN, tests).

Tests that need several devices run in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the flag must be set before JAX starts).
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """The embedded-data cache is shared by the session's tests but never the user's."""
    monkeypatch.setenv("UDA_JAX_CACHE", str(tmp_path_factory.getbasetemp() / "uda_jax_cache"))


@pytest.fixture
def float64():
    """Runs a test with 64-bit floats, for comparisons with finite differences."""
    with jax.enable_x64(True):
        yield
