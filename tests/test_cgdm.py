"""CGDM's gradient discrepancy L_GD against independent float64 computations: finite-difference
gradients, PyTorch 1.6's cosine, and its own gradient with respect to the features."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uda_jax import losses
from uda_jax.methods.cgdm import classifier_gradient_discrepancy
from uda_jax.models.heads import Classifier

B = 4  # source rows, then B target rows
COS_EPS = 1e-8


@pytest.fixture
def tiny(float64):
    """A classifier shaped as CGDM's (dropout → Linear → BN → ReLU → Linear), float64 params."""
    model = Classifier(num_classes=3, widths=(5,), dropout=0.0)
    rng = np.random.default_rng(0)
    features = jnp.asarray(rng.normal(size=(2 * B, 4)))
    variables = model.init(jax.random.key(0), features.astype(jnp.float32), train=False)
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), variables["params"])
    params["out"]["kernel"] = params["out"]["kernel"] * 30  # a non-trivial decision function
    stats = jax.tree.map(lambda s: jnp.asarray(s, jnp.float64), variables["batch_stats"])
    labels_s = jnp.asarray([0, 1, 2, 1])
    labels_t = jnp.asarray([2, 2, 0, 1])

    def logits(p, f):
        return model.apply(
            {"params": p, "batch_stats": stats}, f, train=True, mutable=["batch_stats"]
        )[0]

    return logits, params, features, labels_s, labels_t


def _finite_difference_grad(fn, params, h=1e-6):
    """Central differences of a scalar function of a pytree, entry by entry (numpy)."""
    leaves, treedef = jax.tree.flatten(params)
    grads = []
    for index, leaf in enumerate(leaves):
        flat = np.asarray(leaf, np.float64).ravel()
        grad = np.zeros_like(flat)
        for j in range(flat.size):
            for sign in (1, -1):
                bumped = flat.copy()
                bumped[j] += sign * h
                new = list(leaves)
                new[index] = jnp.asarray(bumped.reshape(leaf.shape))
                grad[j] += sign * float(fn(jax.tree.unflatten(treedef, new))) / (2 * h)
        grads.append(grad.reshape(leaf.shape))
    return jax.tree.unflatten(treedef, grads)


def _pytorch16_cosine(x, y):
    return float(np.sum(x * y) / np.sqrt(max(np.sum(x * x) * np.sum(y * y), COS_EPS**2)))


def _numpy_gradient_discrepancy(grads_s, grads_t):
    """L_GD written out: row-wise cosine over each torch weight row, averaged; 1 − cos; mean."""
    terms = []
    for gs, gt in zip(jax.tree.leaves(grads_s), jax.tree.leaves(grads_t), strict=True):
        if gs.ndim == 2:  # flax kernel [in, out]: torch row j is column j
            cos = np.mean([_pytorch16_cosine(gs[:, j], gt[:, j]) for j in range(gs.shape[1])])
        else:
            cos = _pytorch16_cosine(gs, gt)
        terms.append(1.0 - cos)
    return float(np.mean(terms))


def test_gradient_discrepancy_matches_finite_difference_gradients(tiny):
    logits, params, features, labels_s, labels_t = tiny
    source_loss = lambda p: losses.cross_entropy(logits(p, features)[:B], labels_s)

    def weights(p):  # w_i = 1 + exp(−H(p_i)), written out again
        q = jax.nn.softmax(logits(p, features)[B:])
        return 1.0 + jnp.exp(jnp.sum(q * jnp.log(q + 1e-5), axis=1))

    normaliser = float(jnp.sum(weights(params)))  # detached: a constant for the derivative

    def target_loss(p):
        ce = -jnp.take_along_axis(jax.nn.log_softmax(logits(p, features)[B:]), labels_t[:, None], 1)
        return jnp.mean(weights(p) / normaliser * ce[:, 0])

    grads_s = _finite_difference_grad(jax.jit(source_loss), params)
    grads_t = _finite_difference_grad(jax.jit(target_loss), params)
    expected = _numpy_gradient_discrepancy(grads_s, grads_t)

    got = classifier_gradient_discrepancy(logits, params, features, labels_s, labels_t)
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)
    assert 0.05 < expected < 1.95  # neither aligned nor opposite: the check has teeth


def test_linear_bias_before_batchnorm_has_zero_gradient_and_zero_cosine(tiny):
    """BatchNorm removes the mean, so these biases' gradients are round-off only, and their
    cosine must be ≈ 0 (not ±1 from normalising round-off)."""
    logits, params, features, labels_s, _ = tiny
    grads = jax.grad(lambda p: losses.cross_entropy(logits(p, features)[:B], labels_s))(params)
    assert np.max(np.abs(grads["fc0"]["bias"])) < 1e-12
    assert abs(float(losses.safe_cosine(grads["fc0"]["bias"], grads["fc0"]["bias"]))) < 1e-6


def test_gradient_discrepancy_gradient_wrt_features_matches_central_differences(tiny):
    logits, params, features, labels_s, labels_t = tiny

    def gd_of_features(f):
        return classifier_gradient_discrepancy(logits, params, f, labels_s, labels_t)

    analytic = np.asarray(jax.grad(gd_of_features)(features))
    numeric = _finite_difference_grad(jax.jit(gd_of_features), features, h=1e-5)
    assert np.max(np.abs(analytic)) > 1e-3  # second-order path carries real signal
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-8)


def test_gradient_discrepancy_has_no_nan_with_a_dead_unit(tiny):
    logits, params, features, labels_s, labels_t = tiny
    params["fc0"]["kernel"] = params["fc0"]["kernel"].at[:, 0].set(0.0)
    params["bn0"]["scale"] = params["bn0"]["scale"].at[0].set(0.0)  # unit 0 outputs 0 always

    def gd_of_features(f):
        return classifier_gradient_discrepancy(logits, params, f, labels_s, labels_t)

    value, grad = jax.value_and_grad(gd_of_features)(features)
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(np.asarray(grad)))
