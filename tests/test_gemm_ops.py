"""The CPU-friendly convolution and max-pool equal XLA's own ops, in value and in derivatives of
first and second order (float64, so only the summation order may differ)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax import lax

from uda_jax.config import load_config
from uda_jax.models import gemm_ops

pytestmark = pytest.mark.usefixtures("float64")

CASES = [  # (input shape NHWC, kernel HWIO, strides, padding): LeNet, ResNet stem/3×3/1×1
    ((2, 14, 14, 3), (5, 5, 3, 4), (1, 1), "VALID"),
    ((2, 15, 15, 3), (7, 7, 3, 4), (2, 2), ((3, 3), (3, 3))),
    ((2, 9, 9, 4), (3, 3, 4, 5), (2, 2), ((1, 1), (1, 1))),
    ((2, 8, 8, 4), (1, 1, 4, 6), (2, 2), ((0, 0), (0, 0))),
    ((1, 6, 7, 2), (3, 3, 2, 3), (1, 1), "SAME"),
    ((2, 2, 2, 4), (3, 3, 4, 3), (1, 1), ((1, 1), (1, 1))),  # window wider than the output
]


def _lax_conv(x, k, strides, padding):
    return lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=gemm_ops.NHWC)


def _gemm_conv(x, k, strides, padding):
    return gemm_ops.conv_general_dilated(x, k, strides, padding, dimension_numbers=gemm_ops.NHWC)


@pytest.mark.parametrize("x_shape,k_shape,strides,padding", CASES)
def test_conv_value_gradient_and_second_order_match_lax(x_shape, k_shape, strides, padding):
    kx, kk, kc = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, x_shape, jnp.float64)
    k = jax.random.normal(kk, k_shape, jnp.float64)
    out_shape = _lax_conv(x, k, strides, padding).shape
    c = jax.random.normal(kc, out_shape, jnp.float64)

    def loss(conv):  # a non-linear loss, so second derivatives are not trivial
        return lambda x, k: jnp.sum(jnp.tanh(conv(x, k, strides, padding)) * c)

    ref, new = loss(_lax_conv), loss(_gemm_conv)
    np.testing.assert_allclose(new(x, k), ref(x, k), rtol=1e-12)
    for got, want in zip(jax.grad(new, (0, 1))(x, k), jax.grad(ref, (0, 1))(x, k), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)

    def grad_norm(f):  # a gradient of a gradient, in both arguments
        return lambda x, k: sum(jnp.sum(g**2) for g in jax.grad(f, (0, 1))(x, k))

    for got, want in zip(
        jax.grad(grad_norm(new), (0, 1))(x, k), jax.grad(grad_norm(ref), (0, 1))(x, k), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10)
    # forward over reverse (Hessian-vector products) works through the custom_jvp
    hvp = lambda f: jax.jvp(lambda k: jax.grad(f, 1)(x, k), (k,), (jnp.ones_like(k),))[1]
    np.testing.assert_allclose(hvp(new), hvp(ref), rtol=1e-9, atol=1e-10)


def test_kernel_gradient_is_a_matrix_product_not_a_convolution():
    x = jnp.ones((2, 14, 14, 3))
    k = jnp.ones((5, 5, 3, 4))
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda k: jnp.sum(_gemm_conv(x, k, (1, 1), "VALID"))))(k))
    assert "dot_general" in jaxpr
    assert jaxpr.count("conv_general_dilated") == 1  # only the forward pass


@pytest.mark.parametrize(
    "shape,window,strides,padding",
    [
        ((2, 8, 8, 3), (2, 2), (2, 2), ((0, 0), (0, 0))),  # LeNet
        ((2, 9, 9, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),  # ResNet stem: overlapping, padded
    ],
)
def test_max_pool_matches_flax_in_value_and_gradient(shape, window, strides, padding):
    x = jax.random.normal(jax.random.key(1), shape, jnp.float64)
    c = jax.random.normal(jax.random.key(2), nn.max_pool(x, window, strides, padding).shape)

    def loss(pool):
        return lambda x: jnp.sum(jnp.sin(pool(x, window, strides, padding)) * c)

    flax_pool = lambda x, w, s, p: nn.max_pool(x, w, strides=s, padding=p)
    np.testing.assert_array_equal(
        gemm_ops.max_pool(x, window, strides, padding), flax_pool(x, window, strides, padding)
    )
    np.testing.assert_allclose(
        jax.grad(loss(gemm_ops.max_pool))(x), jax.grad(loss(flax_pool))(x), rtol=1e-12
    )


def test_max_pool_gives_a_tied_window_gradient_to_its_first_element_as_pytorch():
    x = jnp.zeros((1, 2, 2, 1))  # one window, four equal values (e.g. after a ReLU)
    grad = jax.grad(lambda x: jnp.sum(gemm_ops.max_pool(x, (2, 2), (2, 2))))(x)
    np.testing.assert_array_equal(grad[0, :, :, 0], [[1.0, 0.0], [0.0, 0.0]])
    nan = x.at[0, 1, 0, 0].set(jnp.nan)  # NaN wins, as in PyTorch
    assert np.isnan(gemm_ops.max_pool(nan, (2, 2), (2, 2))[0, 0, 0, 0])


def test_kernels_setting_is_checked_and_auto_means_gemm_on_cpu():
    assert gemm_ops.use_gemm_kernels("auto") == (jax.default_backend() == "cpu")
    assert gemm_ops.use_gemm_kernels("gemm") and not gemm_ops.use_gemm_kernels("xla")
    with pytest.raises(ValueError, match=r"model\.kernels"):
        gemm_ops.use_gemm_kernels("fast")
    assert load_config(None, ["model.kernels=xla"]).model.kernels == "xla"
