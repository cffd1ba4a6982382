"""Strict JAX numerics for every test: shape and dtype slips fail loudly.

Tests that need several devices run in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the flag must be set before JAX starts).

Shared fixtures: ``float64`` (64-bit floats for one test) and ``tiny_experiment``, a builder of
each method's tiny experiment (LeNet on random 32×32 arrays, batch 8), built once per session
for each set of config overrides.
"""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The embedded-data cache of the test session, never the user's (set before any fixture runs).
os.environ["UDA_JAX_CACHE"] = (
    os.path.join(
        tempfile.gettempdir(), "uda_jax_test_cache_" + os.environ["PYTEST_XDIST_TESTRUNUID"]
    )
    if "PYTEST_XDIST_TESTRUNUID" in os.environ  # one for all pytest-xdist workers
    else tempfile.mkdtemp(prefix="uda_jax_test_cache_")
)
# One persistent XLA compilation cache for the session, its workers and subprocesses: the many
# tests that build the same train steps compile each once (it cuts the suite's time by half).
os.environ["JAX_COMPILATION_CACHE_DIR"] = (
    os.path.join(
        tempfile.gettempdir(), "uda_jax_test_xla_cache_" + os.environ["PYTEST_XDIST_TESTRUNUID"]
    )
    if "PYTEST_XDIST_TESTRUNUID" in os.environ
    else tempfile.mkdtemp(prefix="uda_jax_test_xla_cache_")
)
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def float64():
    """Runs a test with 64-bit floats, for comparisons with finite differences."""
    with jax.enable_x64(True):
        yield


# ----------------------------------------------------------------------------- tiny experiments

TINY_BATCH = 8
TINY_CLASSES = 10
TINY_OVERRIDES = (
    "model.classifier_widths=[32,32]",
    "model.dropout=0.0",
    "model.discriminator_hidden=32",
    "optimizer.learning_rate=0.05",
    f"data.batch_size={TINY_BATCH}",
)
# per method: the bi-classifier methods run one step-C repeat, CGDM's terms are on from step 0
TINY_METHOD_OVERRIDES = {
    "mcd": ("mcd.num_k=1",),
    "cgdm": ("cgdm.num_k=1", "cgdm.warmup_steps=0"),
    "swd": ("swd.num_k=1",),
}


@dataclasses.dataclass(frozen=True)
class Tiny:
    """One method's tiny experiment: its step context, a state at step 0, one fixed batch.

    ``step`` is ``method.step`` with ``ctx`` bound, compiled as the loop compiles it
    (:func:`uda_jax.experiment.jit`) but without donating the state, so a test may reuse it.
    CGDM's pseudo-labels are random classes (not the −1 of a fresh run), so L^W sees labels.
    """

    experiment: Any
    state: Any
    batch: dict[str, jax.Array]
    step: Callable

    @property
    def method(self):
        return self.experiment.method

    @property
    def ctx(self):
        return self.experiment.ctx

    def jit(self, fn: Callable) -> Callable:
        """``fn`` compiled with the experiment's compiler options (no donation)."""
        from uda_jax.experiment import jit

        return jit(self.experiment, fn)

    def step_of(self, method) -> Callable:
        """The compiled step of ``method`` (e.g. a copy with other weights) on this ctx."""
        return self.jit(functools.partial(method.step, self.ctx))


def _random_domain(name: str, shift: float, seed: int):
    from uda_jax.data.domains import from_arrays

    rng = np.random.default_rng(seed)
    images = rng.normal(size=(2 * TINY_BATCH, 32, 32, 1)) + shift
    labels = rng.integers(0, TINY_CLASSES, 2 * TINY_BATCH)
    class_names = [str(k) for k in range(TINY_CLASSES)]
    return from_arrays(
        name, images.astype(np.float32), labels.astype(np.int32), None, None, class_names
    )


@functools.cache
def _build_tiny(method: str, overrides: tuple[str, ...]) -> Tiny:
    from uda_jax.config import load_config
    from uda_jax.experiment import build_experiment, create_train_state

    source, target = _random_domain("source", 0.0, 0), _random_domain("target", 0.5, 1)
    config = load_config(
        None,
        [
            f"method.name={method}",
            *TINY_OVERRIDES,
            *TINY_METHOD_OVERRIDES.get(method, ()),
            *overrides,
        ],
    )
    experiment = build_experiment(config, source=source, target=target)
    state = create_train_state(experiment)
    if "pseudo_labels" in state.extras:
        rng = np.random.default_rng(2)
        labels = jnp.asarray(rng.integers(0, TINY_CLASSES, 2 * TINY_BATCH), jnp.int32)
        state = state.replace(extras={**state.extras, "pseudo_labels": labels})
    rows = slice(0, TINY_BATCH)
    batch = {
        "source_image": jnp.asarray(source.train_images[rows]),
        "source_label": jnp.asarray(source.train_labels[rows]),
        "target_image": jnp.asarray(target.train_images[rows]),
        "target_index": jnp.arange(TINY_BATCH, dtype=jnp.int32),
    }
    tiny = Tiny(experiment, state, batch, step=None)
    return dataclasses.replace(tiny, step=tiny.step_of(experiment.method))


@pytest.fixture(scope="session")
def tiny_experiment() -> Callable[..., Tiny]:
    """``tiny_experiment(method, *overrides) -> Tiny``: the tiny experiment of ``method``
    (a registered name) with extra config overrides, built once per session for each."""
    return lambda method, *overrides: _build_tiny(method, tuple(overrides))
