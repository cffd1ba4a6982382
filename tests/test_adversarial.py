"""Gradient reversal at every order, the GRL schedule, and the adversarial losses by hand
(:mod:`uda_jax.domain_losses`); the schedules' floating-point type."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uda_jax import domain_losses, optim
from uda_jax.config import ScheduleConfig


def _f(x, coeff):
    """A test function whose second derivative passes through the reversal."""
    return jnp.sum(jnp.sin(domain_losses.gradient_reversal(jnp.sin(x) * x, coeff)) ** 2)


def test_gradient_reversal_is_identity_forward_and_minus_lambda_backward(float64):
    x = jnp.asarray([0.3, -1.2, 2.0])
    np.testing.assert_array_equal(domain_losses.gradient_reversal(x, 0.7), x)
    upstream = jnp.asarray([1.0, 2.0, -3.0])
    _, vjp = jax.vjp(lambda v: domain_losses.gradient_reversal(v, 0.7), x)
    np.testing.assert_allclose(vjp(upstream)[0], -0.7 * upstream, rtol=1e-15)


@jax.custom_vjp
def _naive_reversal(x, coeff):
    return x


_naive_reversal.defvjp(lambda x, c: (x, c), lambda c, g: (-c * g, None))


def test_gradient_reversal_second_derivative_matches_the_analytic_value(float64):
    """Every derivative through the layer reverses (as PyTorch's
    autograd.Function does under double backprop); a custom_vjp returning x does not."""
    coeff = 0.5
    x = jnp.asarray([0.4, -0.9])
    # f(x) = Σ sin(R(u(x)))², u = sin(x)·x, R the reversal (R = id forward, R' = −coeff):
    #   f'  = −coeff · sin(2u) · u'
    #   f'' = coeff² · 2 cos(2u) · u'² − coeff · sin(2u) · u''
    u = np.sin(x) * x
    du = np.cos(x) * x + np.sin(x)
    d2u = -np.sin(x) * x + 2 * np.cos(x)
    grad_expected = -coeff * np.sin(2 * u) * du
    hess_expected = coeff**2 * 2 * np.cos(2 * u) * du**2 - coeff * np.sin(2 * u) * d2u
    np.testing.assert_allclose(jax.grad(_f)(x, coeff), grad_expected, rtol=1e-12)
    np.testing.assert_allclose(np.diag(jax.hessian(_f)(x, coeff)), hess_expected, rtol=1e-12)
    # forward-over-reverse (jvp of grad: the cheap Hessian-vector product) agrees
    _, hvp = jax.jvp(lambda v: jax.grad(_f)(v, coeff), (x,), (jnp.asarray([1.0, 0.0]),))
    np.testing.assert_allclose(hvp[0], hess_expected[0], rtol=1e-12)
    # the naive custom_vjp gets the same first derivative but a wrong second one
    naive = lambda v: jnp.sum(jnp.sin(_naive_reversal(jnp.sin(v) * v, coeff)) ** 2)
    np.testing.assert_allclose(jax.grad(naive)(x), grad_expected, rtol=1e-12)
    assert not np.allclose(np.diag(jax.hessian(naive, holomorphic=False)(x)), hess_expected)


def test_grl_coefficient_schedule():
    np.testing.assert_allclose(domain_losses.grl_coefficient(0), 0.0, atol=1e-7)
    np.testing.assert_allclose(
        domain_losses.grl_coefficient(5000), 2 / (1 + np.exp(-5)) - 1, rtol=1e-6
    )
    assert 0.9999 < float(domain_losses.grl_coefficient(10000)) < 1.0


def _numpy_grl(steps, max_iter=10000.0, alpha=10.0):
    return 2.0 / (1.0 + np.exp(-alpha * steps / max_iter)) - 1.0


def _numpy_inv(steps, lr=0.01, gamma=0.001, power=0.75):
    return lr * (1.0 + gamma * steps) ** (-power)


STEPS = np.asarray([0, 1, 37, 999, 5000, 123_457])


@pytest.mark.parametrize("step_dtype", [np.int32, np.int64, np.float64])
def test_schedules_are_float64_under_x64(float64, step_dtype):
    """The schedules compute in the default float type: under x64 in float64, to round-off of
    the NumPy float64 formula (float32 would be off by about 1e-8). The coefficient, in [0, 1),
    is ``2/(1 + e^−x) − 1``: near 0 its subtraction leaves an absolute round-off of 1 ulp of 1."""
    steps = STEPS.astype(step_dtype)
    schedules = {  # name: (schedule, numpy float64 formula, absolute tolerance)
        "grl": (domain_losses.grl_coefficient, _numpy_grl, 1e-15),
        "grl_short": (
            lambda t: domain_losses.grl_coefficient(t, 300.0, 7.0),
            lambda t: _numpy_grl(t, 300.0, 7.0),
            1e-15,
        ),
        "inv": (optim.inv_schedule(0.01, 0.001, 0.75), _numpy_inv, 0.0),
        "inv_built": (
            optim.build_schedule(0.01, ScheduleConfig("inv", {"gamma": 0.001, "power": 0.75})),
            _numpy_inv,
            0.0,
        ),
    }
    for name, (schedule, numpy_schedule, atol) in schedules.items():
        expected = numpy_schedule(STEPS.astype(np.float64))
        values = [schedule(jnp.asarray(steps)), *(schedule(t) for t in steps.tolist())]
        wanted = [expected, *expected]
        for value, want in zip(values, wanted, strict=True):
            assert jnp.asarray(value).dtype == jnp.float64, name
            np.testing.assert_allclose(np.asarray(value), want, rtol=1e-15, atol=atol, err_msg=name)
    # a traced int32 step (the train state's counter) gives float64 too
    traced = jax.jit(domain_losses.grl_coefficient)(jnp.asarray(STEPS, jnp.int32))
    assert traced.dtype == jnp.float64
    np.testing.assert_allclose(traced, _numpy_grl(STEPS.astype(np.float64)), atol=1e-15)


def test_schedules_are_float32_by_default():
    """Without x64 the schedules are float32 (to float32 round-off: the coefficient's
    subtraction near 0 costs an absolute 1e-7)."""
    schedules = (
        (domain_losses.grl_coefficient, _numpy_grl, 1e-7),
        (optim.inv_schedule(0.01, 0.001, 0.75), _numpy_inv, 0.0),
    )
    for schedule, numpy_schedule, atol in schedules:
        for steps in (jnp.asarray(STEPS, jnp.int32), 5000, 5000.0):
            value = schedule(steps)
            assert value.dtype == jnp.float32
            expected = numpy_schedule(np.asarray(steps, np.float64))
            np.testing.assert_allclose(value, expected, rtol=1e-6, atol=atol)


def test_multilinear_map_on_a_hand_example():
    probs = jnp.asarray([[0.25, 0.75]])
    features = jnp.asarray([[2.0, -4.0, 8.0]])
    expected = [[0.5, -1.0, 2.0, 1.5, -3.0, 6.0]]  # row-major p_c · f_d
    np.testing.assert_allclose(domain_losses.multilinear_map(probs, features), expected)


def _logit(q):
    return jnp.log(jnp.asarray(q)) - jnp.log1p(-jnp.asarray(q))


def test_dann_loss_is_mean_bce_with_source_one(float64):
    d = _logit([0.9, 0.6, 0.2, 0.3])
    expected = -np.mean(np.log([0.9, 0.6, 0.8, 0.7]))
    np.testing.assert_allclose(domain_losses.dann_loss(d, 2), expected, rtol=1e-12)
    # saturated logits: finite value and gradient (probabilities would give 0·∞ = NaN)
    grad = jax.grad(lambda z: domain_losses.dann_loss(z, 2))(
        jnp.asarray([200.0, -200.0, 200.0, -200.0])
    )
    assert np.all(np.isfinite(np.asarray(grad)))


def _entropy(p):
    return -np.sum(p * np.log(p + 1e-5), axis=1)


def test_cdan_entropy_weights_on_a_hand_example(float64):
    probs = np.asarray([[0.9, 0.1], [0.5, 0.5], [0.7, 0.3], [0.2, 0.8]])
    d = _logit([0.8, 0.4, 0.3, 0.6])
    w = 1 + np.exp(-_entropy(probs))
    w = np.concatenate([w[:2] / w[:2].sum(), w[2:] / w[2:].sum()])
    bce = -np.log(np.asarray([0.8, 0.4, 0.7, 0.4]))
    expected = np.sum(w * bce) / np.sum(w)
    got = domain_losses.cdan_entropy_loss(d, jnp.asarray(probs), 2, 1.0)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_gvb_transfer_loss_on_a_hand_example_and_reversed_entropy_gradient(float64):
    probs = np.asarray([[0.9, 0.1], [0.5, 0.5], [0.7, 0.3], [0.2, 0.8]])
    d = _logit([0.8, 0.4, 0.3, 0.6])
    e = np.exp(-_entropy(probs))
    w = np.concatenate([e[:2] / e[:2].sum(), e[2:] / e[2:].sum()])
    bce = -np.log(np.asarray([0.8, 0.4, 0.7, 0.4]) + 1e-8)
    got = domain_losses.gvb_transfer_loss(d, jnp.asarray(probs), 2, 0.5)
    np.testing.assert_allclose(got, 0.5 * np.sum(w * bce), rtol=1e-12)

    # The entropy path is reversed with coefficient 0.5 (normalisers detached).
    def unreversed(p):
        ent = -jnp.sum(p * jnp.log(p + 1e-5), axis=1)
        ee = jnp.exp(-ent)
        ww = jnp.concatenate([ee[:2] / e[:2].sum(), ee[2:] / e[2:].sum()])
        return 0.5 * jnp.sum(ww * bce)

    p = jnp.asarray(probs)
    grad = jax.grad(lambda q: domain_losses.gvb_transfer_loss(d, q, 2, 0.5))(p)
    np.testing.assert_allclose(grad, -0.5 * jax.grad(unreversed)(p), rtol=1e-10)


def test_gvb_bce_is_finite_at_saturated_probabilities():
    probs, labels = jnp.asarray([0.0, 1.0]), jnp.asarray([1.0, 0.0])
    grad = jax.grad(lambda q: jnp.sum(domain_losses.binary_cross_entropy(q, labels, 1e-8)))(probs)
    assert np.all(np.isfinite(np.asarray(grad)))
