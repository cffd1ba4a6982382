"""SWD (Lee et al., CVPR 2019): the sliced Wasserstein discrepancy against NumPy, and its steps."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uda_jax.config import load_config
from uda_jax.errors import UserError
from uda_jax.methods import lookup
from uda_jax.methods.api import classify
from uda_jax.methods.mcd import MCD, discrepancy_key
from uda_jax.methods.swd import (
    SWD,
    SwdConfig,
    random_projections,
    sliced_wasserstein_discrepancy,
)

ROOT = Path(__file__).resolve().parent.parent


def _numpy_swd(p1: np.ndarray, p2: np.ndarray, directions: np.ndarray) -> float:
    """The discrepancy, one direction at a time, from unnormalised directions ``[C, M]``."""
    total = []
    for m in range(directions.shape[1]):
        u = directions[:, m] / np.linalg.norm(directions[:, m])
        a, b = np.sort(p1 @ u), np.sort(p2 @ u)
        total.append(np.mean((a - b) ** 2))
    return float(np.mean(total))


def _probs(rng: np.random.Generator, batch: int, classes: int) -> np.ndarray:
    z = rng.normal(size=(batch, classes)) * 2
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_discrepancy_matches_numpy_with_the_same_projections():
    rng = np.random.default_rng(0)
    p1, p2 = _probs(rng, 16, 5), _probs(rng, 16, 5)
    key = jax.random.key(3)
    projections = random_projections(key, 5, 128, jnp.float32)
    directions = np.asarray(jax.random.normal(key, (5, 128), jnp.float32), np.float64)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(projections), axis=0), 1.0, rtol=1e-6)
    got = sliced_wasserstein_discrepancy(
        jnp.asarray(p1, jnp.float32), jnp.asarray(p2, jnp.float32), projections
    )
    np.testing.assert_allclose(float(got), _numpy_swd(p1, p2, directions), rtol=1e-5)


def test_discrepancy_is_zero_for_identical_inputs_and_positive_otherwise():
    rng = np.random.default_rng(1)
    p1 = jnp.asarray(_probs(rng, 12, 4), jnp.float32)
    p2 = jnp.asarray(_probs(rng, 12, 4), jnp.float32)
    projections = random_projections(jax.random.key(0), 4, 64, jnp.float32)
    assert float(sliced_wasserstein_discrepancy(p1, p1, projections)) == 0.0
    # a permutation of the batch is the same empirical distribution
    shuffled = p1[jnp.asarray(rng.permutation(12))]
    assert float(sliced_wasserstein_discrepancy(p1, shuffled, projections)) < 1e-12
    assert float(sliced_wasserstein_discrepancy(p1, p2, projections)) > 0.0


def test_registered_with_its_own_section_and_the_digits_config_loads():
    assert lookup("swd") is SWD
    config = load_config(ROOT / "configs/digits_swd.yaml")
    assert config.method.name == "swd"
    assert config.section("swd") == SwdConfig(num_projections=128, num_k=4)
    assert SWD.network.num_classifiers == 2
    assert issubclass(SWD, MCD) and not SWD.joint_batch  # Saito's MCD: separate domain batches
    with pytest.raises(UserError, match=r"swd\.num_projections"):
        load_config(None, ["method.name=swd", "swd.num_projections=0"])


def test_one_step_runs_and_step_c_lowers_its_objective(tiny_experiment):
    tiny = tiny_experiment("swd", "swd.num_k=1")
    method, ctx, batch = tiny.method, tiny.ctx, tiny.batch
    state, metrics = tiny.step(tiny.state, batch, jax.random.key(0))
    assert int(state.step) == 1
    assert all(np.isfinite(np.asarray(v)) for v in metrics.values())
    assert float(metrics["train/disc_max"]) > 0.0
    assert set(metrics) == {f"train/{m}" for m in method.metrics}

    # step C alone, from the state after one full step: same key, so same projections and masks
    method = dataclasses.replace(method, config=dataclasses.replace(method.config, num_k=1))
    key = jax.random.key(7)

    def objective(state):  # step C's forward: the target batch alone, as in MCD
        g_key, f_key = jax.random.split(key)
        features, _ = ctx.network.apply_generator(
            state.params["g"], state.batch_stats["g"], batch["target_image"], train=True, rng=g_key
        )
        logits, _ = classify(ctx, state.params, state.batch_stats, features, f_key)
        disc, _ = method.target_terms(logits, discrepancy_key(key))
        return disc

    step_c = tiny.jit(lambda s, k: method.step_c(ctx, s, batch, k))
    before = float(tiny.jit(objective)(state))
    after_state, metrics_c = step_c(state, key)
    np.testing.assert_allclose(float(metrics_c["train/loss_c"]), before, rtol=1e-5)
    after = float(tiny.jit(objective)(after_state))
    assert after < before, (before, after)
