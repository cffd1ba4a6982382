"""Losses against independent numpy computations: CE, the classifier discrepancy, the entropy
terms, the pseudo-label weighted CE, and the cosine pieces of CGDM's gradient discrepancy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uda_jax import losses


def _probs(seed, shape=(6, 4)):
    logits = np.random.default_rng(seed).normal(size=shape)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return logits, e / e.sum(1, keepdims=True)


def test_cross_entropy_matches_numpy():
    logits, probs = _probs(0)
    labels = np.array([0, 1, 2, 3, 0, 1])
    expected = -np.mean(np.log(probs[np.arange(6), labels]))
    got = losses.cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(labels))
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_discrepancy_is_mean_absolute_difference():
    _, p1 = _probs(1)
    _, p2 = _probs(2)
    got = losses.classifier_discrepancy(jnp.asarray(p1), jnp.asarray(p2))
    np.testing.assert_allclose(got, np.abs(p1 - p2).sum() / p1.size, rtol=1e-6)


def test_information_entropy_is_conditional_plus_negative_marginal_entropy():
    _, p = _probs(3)
    cond = np.mean(-np.sum(p * np.log(p + 1e-5), axis=1))
    mean = p.mean(0) + 1e-5
    np.testing.assert_allclose(losses.conditional_entropy(jnp.asarray(p)), cond, rtol=1e-6)
    np.testing.assert_allclose(
        losses.information_entropy(jnp.asarray(p)), cond + np.sum(mean * np.log(mean)), rtol=1e-6
    )


def test_weighted_cross_entropy_value_and_detached_normaliser(float64):
    logits, p = _probs(4)
    labels = np.array([3, 2, 1, 0, 1, 2])
    h = -np.sum(p * np.log(p + 1e-5), axis=1)
    w = 1 + np.exp(-h)
    ce = -np.log(p[np.arange(6), labels])
    expected = np.mean(w / w.sum() * ce)
    got = losses.weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(got, expected, rtol=1e-12)

    # Gradient: only the normaliser Σw is a constant; w_i itself is differentiated.
    def reference(z):
        q = jax.nn.softmax(z)
        weights = 1 + jnp.exp(jnp.sum(q * jnp.log(q + 1e-5), axis=1))
        ce_i = -jnp.take_along_axis(jax.nn.log_softmax(z), jnp.asarray(labels)[:, None], 1)[:, 0]
        return jnp.mean(weights / w.sum() * ce_i)

    z = jnp.asarray(logits)
    np.testing.assert_allclose(
        jax.grad(losses.weighted_cross_entropy)(z, jnp.asarray(labels)),
        jax.grad(reference)(z),
        rtol=1e-10,
    )


def test_safe_cosine_matches_pytorch_16_formula_and_has_no_nan_gradient(float64):
    x = jnp.asarray([1.0, 2.0, -1.0])
    y = jnp.asarray([0.5, -1.0, 2.0])
    expected = float(x @ y) / np.sqrt(float(x @ x) * float(y @ y))
    np.testing.assert_allclose(losses.safe_cosine(x, y), expected, rtol=1e-12)
    zero = jnp.zeros(3)
    assert float(losses.safe_cosine(zero, y)) == 0.0
    grad = jax.grad(lambda a: losses.safe_cosine(a, y))(zero)
    assert np.all(np.isfinite(grad))
    tiny = jnp.asarray([1e-9, -2e-9, 1e-9])  # round-off sized: below ε, cosine ≈ 0 not ±1
    assert abs(float(losses.safe_cosine(tiny, tiny))) < 1e-8


def test_tensor_cosine_is_row_wise_over_pytorch_rows():
    rng = np.random.default_rng(5)
    gs, gt = rng.normal(size=(2, 7, 3))  # flax kernel [in=7, out=3] = torch weight [3, 7]
    torch_rows = [
        gs[:, j] @ gt[:, j] / np.linalg.norm(gs[:, j]) / np.linalg.norm(gt[:, j]) for j in range(3)
    ]
    got = losses.tensor_gradient_cosine(jnp.asarray(gs), jnp.asarray(gt))
    np.testing.assert_allclose(got, np.mean(torch_rows), rtol=1e-5)


def test_gradient_discrepancy_zero_when_aligned_and_two_when_opposite():
    grads = {"w": jnp.ones((4, 3)), "b": jnp.arange(1.0, 4.0)}
    assert float(losses.gradient_discrepancy(grads, grads)) == pytest.approx(0.0, abs=1e-6)
    flipped = jax.tree.map(lambda g: -2.0 * g, grads)
    assert float(losses.gradient_discrepancy(grads, flipped)) == pytest.approx(2.0, abs=1e-6)
